# Finds oneDNN (dnnl.hpp and libdnnl; Debian: libdnnl-dev), the CPU's bf16 GEMM, and defines the
# imported target dl::dnnl. Its own CMake package is not used: Debian's asks for the OpenCL headers
# of its GPU runtime, which the engine never uses. DNNL_INCLUDE_DIR and DNNL_LIBRARY override.
# Sets dl_dnnl_FOUND and dl_dnnl_VERSION (from dnnl_version.h).
find_path(DNNL_INCLUDE_DIR dnnl.hpp)
find_library(DNNL_LIBRARY dnnl)
unset(dl_dnnl_VERSION)
find_file(DNNL_VERSION_HEADER NAMES oneapi/dnnl/dnnl_version.h dnnl_version.h
          HINTS ${DNNL_INCLUDE_DIR})
if(DNNL_VERSION_HEADER)
  file(STRINGS ${DNNL_VERSION_HEADER} dl_dnnl_version_lines
       REGEX "^#define DNNL_VERSION_(MAJOR|MINOR|PATCH) +[0-9]+")
  foreach(part IN ITEMS MAJOR MINOR PATCH)
    string(REGEX MATCH "DNNL_VERSION_${part} +([0-9]+)" _ "${dl_dnnl_version_lines}")
    list(APPEND dl_dnnl_VERSION ${CMAKE_MATCH_1})
  endforeach()
  list(JOIN dl_dnnl_VERSION "." dl_dnnl_VERSION)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(dl_dnnl REQUIRED_VARS DNNL_LIBRARY DNNL_INCLUDE_DIR
                                  VERSION_VAR dl_dnnl_VERSION)
if(dl_dnnl_FOUND AND NOT TARGET dl::dnnl)
  add_library(dl::dnnl UNKNOWN IMPORTED)
  set_target_properties(dl::dnnl PROPERTIES IMPORTED_LOCATION "${DNNL_LIBRARY}"
                                            INTERFACE_INCLUDE_DIRECTORIES "${DNNL_INCLUDE_DIR}")
endif()
