# gemma_add_test(NAME name SOURCES a.cc ... LIBS lib ... [LABELS l ...] [TIMEOUT s]
#                [FIXTURES f ...])
# Builds a GoogleTest binary and registers each of its tests with CTest.
# FIXTURES names CTest fixtures (FIXTURES_SETUP tests) that must run first.
function(gemma_add_test)
  cmake_parse_arguments(T "" "NAME;TIMEOUT" "SOURCES;LIBS;LABELS;FIXTURES" ${ARGN})
  if(NOT GEMMA_BUILD_TESTS)
    return()
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock gemma_gtest_main)
  target_compile_definitions(${T_NAME} PRIVATE
      GEMMA_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
      GEMMA_BINARY_DIR="${CMAKE_BINARY_DIR}")
  set(_props TIMEOUT ${T_TIMEOUT} ENVIRONMENT "GEMMA_BIN_DIR=${CMAKE_BINARY_DIR}/bin")
  if(T_LABELS)
    # One label: CMake 3.25's test discovery writes a list property out
    # unquoted, so "LABELS a;b FIXTURES_REQUIRED f" became LABELS a plus a
    # property named b, and the fixture was lost. ctest -L takes a regular
    # expression, so "a+b" still answers to -L a and -L b.
    string(REPLACE ";" "+" _label "${T_LABELS}")
    list(APPEND _props LABELS "${_label}")
  endif()
  if(T_FIXTURES)
    list(APPEND _props FIXTURES_REQUIRED "${T_FIXTURES}")
  endif()
  gtest_discover_tests(${T_NAME} DISCOVERY_TIMEOUT 60 PROPERTIES ${GEMMA_GTEST_PROPERTIES} ${_props})
endfunction()

# gemma_torch_pch(target): reuse one precompiled <torch/torch.h> for a target.
# The first call creates the PCH; later targets reuse it (same flags required).
function(gemma_torch_pch target)
  # Executables compile as PIE, libraries as PIC: a PCH made for one is
  # refused by the other, so only libraries share it.
  get_target_property(_type ${target} TYPE)
  if(_type STREQUAL "EXECUTABLE")
    return()
  endif()
  if(NOT TARGET gemma_torch_pch_host)
    add_library(gemma_torch_pch_host STATIC ${CMAKE_SOURCE_DIR}/cmake/pch_host.cc)
    target_link_libraries(gemma_torch_pch_host PUBLIC gemma_torch)
    target_precompile_headers(gemma_torch_pch_host PRIVATE <torch/torch.h>)
  endif()
  target_precompile_headers(${target} REUSE_FROM gemma_torch_pch_host)
endfunction()
