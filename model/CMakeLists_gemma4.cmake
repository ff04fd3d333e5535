# Gemma 4 (MoE) modules: config (no LibTorch), MoE, text decoder, HF mapping.
# Included from model/CMakeLists.txt after gemma_model.
add_library(gemma_model_gemma4_config STATIC gemma4_config.cc)
target_include_directories(gemma_model_gemma4_config PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(gemma_model_gemma4_config PUBLIC gemma_model_config gemma_common
    nlohmann_json::nlohmann_json absl::status absl::statusor absl::strings)

add_library(gemma_model_gemma4 STATIC moe.cc gemma4.cc hf_mapping_gemma4.cc
    gemma4_checkpoint.cc
    gemma4_vision.cc gemma4_model.cc generate_gemma4.cc)
target_link_libraries(gemma_model_gemma4 PUBLIC gemma_model_gemma4_config gemma_model)
gemma_torch_pch(gemma_model_gemma4)

gemma_add_test(NAME model_gemma4_config_test SOURCES gemma4_config_test.cc
               LIBS gemma_model_gemma4_config LABELS model)

# Gemma 4 in our sharded checkpoint (EP layouts), conversions, the per-rank
# loader and writer, on the parity fixture's tiny HF models.
if(GEMMA_BUILD_TESTS)
  add_executable(gemma4_checkpoint_test gemma4_checkpoint_test.cc)
  target_link_libraries(gemma4_checkpoint_test PRIVATE gemma_model_gemma4
      GTest::gtest GTest::gmock gemma_gtest_main)
  target_compile_definitions(gemma4_checkpoint_test PRIVATE
      GEMMA_SOURCE_DIR="${CMAKE_SOURCE_DIR}" GEMMA_BINARY_DIR="${CMAKE_BINARY_DIR}"
      GEMMA_PYTHON_EXE="${GEMMA_PYTHON}")
  gemma_torch_pch(gemma4_checkpoint_test)
  gtest_discover_tests(gemma4_checkpoint_test DISCOVERY_TIMEOUT 60 PROPERTIES
      ${GEMMA_GTEST_PROPERTIES}
      FIXTURES_REQUIRED gemma4_parity_data LABELS "model+formats" TIMEOUT 600
      ENVIRONMENT "GEMMA_PARITY_DATA=${CMAKE_BINARY_DIR}/parity_data_gemma4")
endif()
