# LibTorch from the PyPI torch wheel. deploy/build.sh passes
# -DCMAKE_PREFIX_PATH=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)').
#
# We define our own target instead of linking the wheel's `torch` target: the
# wheel's include folder carries protobuf 3.13 headers (include/google/) that
# would shadow Debian's protobuf, which our gRPC code is generated for. So the
# headers come through a shadow folder that has every entry but `google/`.
find_path(GEMMA_TORCH_ROOT include/torch/csrc/api/include/torch/torch.h
          PATHS ${CMAKE_PREFIX_PATH} PATH_SUFFIXES ../.. NO_DEFAULT_PATH REQUIRED)
get_filename_component(GEMMA_TORCH_ROOT "${GEMMA_TORCH_ROOT}" REALPATH)
set(_torch_inc ${GEMMA_TORCH_ROOT}/include)
set(_shadow ${CMAKE_BINARY_DIR}/torch_include)
file(MAKE_DIRECTORY ${_shadow})
file(GLOB _entries RELATIVE ${_torch_inc} ${_torch_inc}/*)
foreach(_e ${_entries})
  if(NOT _e STREQUAL "google" AND NOT EXISTS ${_shadow}/${_e})
    file(CREATE_LINK ${_torch_inc}/${_e} ${_shadow}/${_e} SYMBOLIC)
  endif()
endforeach()

set(_lib ${GEMMA_TORCH_ROOT}/lib)
add_library(gemma_torch INTERFACE)
target_include_directories(gemma_torch SYSTEM INTERFACE
    ${_shadow} ${_shadow}/torch/csrc/api/include)
target_compile_definitions(gemma_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1 USE_C10D_GLOO=1)
# Every LibTorch user compiles with -pthread (gRPC's targets add it too), so
# that one precompiled header fits them all (it defines _REENTRANT).
target_compile_options(gemma_torch INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-pthread>)
target_link_libraries(gemma_torch INTERFACE
    ${_lib}/libtorch.so ${_lib}/libtorch_cpu.so ${_lib}/libc10.so Threads::Threads)
if(GEMMA_WITH_CUDA)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  target_compile_definitions(gemma_torch INTERFACE GEMMA_WITH_CUDA=1 USE_C10D_NCCL=1)
  # Keep libtorch_cuda loaded though no symbol of it is referenced directly,
  # so the CUDA backend registers itself.
  target_link_libraries(gemma_torch INTERFACE
      "-Wl,--no-as-needed" ${_lib}/libtorch_cuda.so ${_lib}/libc10_cuda.so "-Wl,--as-needed"
      CUDA::cudart)
endif()
set(GEMMA_TORCH_LIB_DIR ${_lib})
message(STATUS "LibTorch: ${GEMMA_TORCH_ROOT}")
