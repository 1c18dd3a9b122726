# The engine's libraries as a CMake package, the same names in both ways of using it:
#   add_subdirectory / FetchContent: the aliases dl::engine, dl::models, dl::kernels_cpu and, with
#     the CUDA path, dl::kernels_cuda;
#   cmake --install, then find_package(convmixer_engine): the same names, imported from
#     <prefix>/lib/cmake/convmixer_engine, with the headers under <prefix>/include as they are
#     included here ("engine/tensor.h", "models/convmixer.h", "kernels/cpu/conv2d.h").
# The package config finds again what the targets link (OpenMP, oneDNN, zlib, libjpeg, and with
# the CUDA path the CUDA toolkit and cuDNN; MPI and NCCL where built) and sets
# convmixer_engine_HAS_CUDA, _HAS_MPI and _HAS_NCCL.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(dl_package_targets dl_kernels_cpu dl_engine dl_models)
if(DL_HAVE_CUDA)
  list(APPEND dl_package_targets dl_kernels_cuda)
endif()
foreach(target IN LISTS dl_package_targets)
  get_target_property(export_name ${target} EXPORT_NAME)
  add_library(dl::${export_name} ALIAS ${target})
endforeach()

install(TARGETS ${dl_package_targets} EXPORT convmixer_engine_targets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# engine/cuda/ and kernels/cuda/ include the CUDA headers: installed with the CUDA path only.
set(dl_cuda_header_rule)
if(NOT DL_HAVE_CUDA)
  set(dl_cuda_header_rule PATTERN cuda EXCLUDE)
endif()
install(DIRECTORY engine models kernels DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h" PATTERN "*.cuh" ${dl_cuda_header_rule})

set(dl_package_dir ${CMAKE_INSTALL_LIBDIR}/cmake/convmixer_engine)
install(EXPORT convmixer_engine_targets NAMESPACE dl:: DESTINATION ${dl_package_dir}
        FILE convmixer_engineTargets.cmake)
configure_package_config_file(cmake/convmixer_engineConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/convmixer_engineConfig.cmake
                              INSTALL_DESTINATION ${dl_package_dir})
# 0.x: a minor version may change the interface.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/convmixer_engineConfigVersion.cmake
                                 COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/convmixer_engineConfig.cmake
              ${PROJECT_BINARY_DIR}/convmixer_engineConfigVersion.cmake
              cmake/Finddl_dnnl.cmake cmake/Finddl_cudnn.cmake cmake/Finddl_nccl.cmake
        DESTINATION ${dl_package_dir})
