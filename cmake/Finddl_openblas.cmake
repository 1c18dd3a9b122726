# Finds OpenBLAS, the CPU kernels' GEMM, and defines the imported target dl::openblas (the library
# and cblas.h). The OpenMP build (Debian: libopenblas-openmp-dev) comes first: it shares the
# kernels' OpenMP thread pool, where the pthread build's threads and OpenMP's spinning workers
# fight over the cores (measured: a CPU step 1.45x slower on 2 cores). Otherwise FindBLAS with
# BLA_VENDOR OpenBLAS: the kernels call openblas_* functions, so another BLAS will not do.
# Sets dl_openblas_FOUND, dl_openblas_LIBRARIES and dl_openblas_IS_OPENMP.
find_library(DL_OPENBLAS_OPENMP openblas
             PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-openmp NO_DEFAULT_PATH)
if(DL_OPENBLAS_OPENMP)
  set(dl_openblas_LIBRARIES ${DL_OPENBLAS_OPENMP})
  set(dl_openblas_IS_OPENMP TRUE)
else()
  set(dl_openblas_saved_vendor "${BLA_VENDOR}")
  set(BLA_VENDOR OpenBLAS)
  find_package(BLAS QUIET)
  set(BLA_VENDOR "${dl_openblas_saved_vendor}")
  set(dl_openblas_LIBRARIES ${BLAS_LIBRARIES})
  set(dl_openblas_IS_OPENMP FALSE)
endif()
find_path(CBLAS_INCLUDE_DIR cblas.h)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(dl_openblas REQUIRED_VARS dl_openblas_LIBRARIES
                                                            CBLAS_INCLUDE_DIR)
if(dl_openblas_FOUND AND NOT TARGET dl::openblas)
  add_library(dl::openblas INTERFACE IMPORTED)
  set_target_properties(dl::openblas PROPERTIES
                        INTERFACE_LINK_LIBRARIES "${dl_openblas_LIBRARIES}"
                        INTERFACE_INCLUDE_DIRECTORIES "${CBLAS_INCLUDE_DIR}")
endif()
