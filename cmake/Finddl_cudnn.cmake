# Finds cuDNN (cudnn.h and libcudnn, beside the CUDA toolkit unless CUDNN_INCLUDE_DIR and
# CUDNN_LIBRARY say otherwise) and defines the imported target dl::cudnn. Call it after
# find_package(CUDAToolkit), with the least major version accepted: find_package(dl_cudnn 9).
# Sets dl_cudnn_FOUND and dl_cudnn_VERSION (major.minor.patch, from cudnn_version.h).
find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR})
unset(dl_cudnn_VERSION)
if(CUDNN_INCLUDE_DIR AND EXISTS ${CUDNN_INCLUDE_DIR}/cudnn_version.h)
  file(STRINGS ${CUDNN_INCLUDE_DIR}/cudnn_version.h dl_cudnn_version_lines
       REGEX "^#define CUDNN_(MAJOR|MINOR|PATCHLEVEL) +[0-9]+")
  foreach(part IN ITEMS MAJOR MINOR PATCHLEVEL)
    string(REGEX MATCH "CUDNN_${part} +([0-9]+)" _ "${dl_cudnn_version_lines}")
    list(APPEND dl_cudnn_VERSION ${CMAKE_MATCH_1})
  endforeach()
  list(JOIN dl_cudnn_VERSION "." dl_cudnn_VERSION)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(dl_cudnn REQUIRED_VARS CUDNN_LIBRARY CUDNN_INCLUDE_DIR
                                  VERSION_VAR dl_cudnn_VERSION)
if(dl_cudnn_FOUND AND NOT TARGET dl::cudnn)
  add_library(dl::cudnn UNKNOWN IMPORTED)
  set_target_properties(dl::cudnn PROPERTIES IMPORTED_LOCATION "${CUDNN_LIBRARY}"
                                             INTERFACE_INCLUDE_DIRECTORIES "${CUDNN_INCLUDE_DIR}")
endif()
