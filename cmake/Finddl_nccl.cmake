# Finds NCCL (nccl.h and libnccl, beside the CUDA toolkit unless NCCL_INCLUDE_DIR and
# NCCL_LIBRARY say otherwise) and defines the imported target dl::nccl. Call it after
# find_package(CUDAToolkit). Sets dl_nccl_FOUND and dl_nccl_VERSION (from nccl.h).
find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
unset(dl_nccl_VERSION)
if(NCCL_INCLUDE_DIR AND EXISTS ${NCCL_INCLUDE_DIR}/nccl.h)
  file(STRINGS ${NCCL_INCLUDE_DIR}/nccl.h dl_nccl_version_lines
       REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
  foreach(part IN ITEMS MAJOR MINOR PATCH)
    string(REGEX MATCH "NCCL_${part} +([0-9]+)" _ "${dl_nccl_version_lines}")
    list(APPEND dl_nccl_VERSION ${CMAKE_MATCH_1})
  endforeach()
  list(JOIN dl_nccl_VERSION "." dl_nccl_VERSION)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(dl_nccl REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR
                                  VERSION_VAR dl_nccl_VERSION)
if(dl_nccl_FOUND AND NOT TARGET dl::nccl)
  add_library(dl::nccl UNKNOWN IMPORTED)
  set_target_properties(dl::nccl PROPERTIES IMPORTED_LOCATION "${NCCL_LIBRARY}"
                                            INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()
