# Gemma 4 (MoE) modules: config (no LibTorch), MoE, text decoder, HF mapping.
# Included from model/CMakeLists.txt after gemma_model.
add_library(gemma_model_gemma4_config STATIC gemma4_config.cc)
target_include_directories(gemma_model_gemma4_config PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(gemma_model_gemma4_config PUBLIC gemma_model_config gemma_common
    nlohmann_json::nlohmann_json absl::status absl::statusor absl::strings)

add_library(gemma_model_gemma4 STATIC moe.cc gemma4.cc hf_mapping_gemma4.cc
    gemma4_vision.cc gemma4_model.cc)
target_link_libraries(gemma_model_gemma4 PUBLIC gemma_model_gemma4_config gemma_model)
gemma_torch_pch(gemma_model_gemma4)

gemma_add_test(NAME model_gemma4_config_test SOURCES gemma4_config_test.cc
               LIBS gemma_model_gemma4_config LABELS model)
