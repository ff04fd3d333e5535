# Gemma 3 modules (config, layers, decoder, SigLIP, VL wrapper, KV cache,
# generation). Included from model/CMakeLists.txt.

# Config parsing has no LibTorch dependency.
add_library(gemma_model_config STATIC config.cc json_object_reader.cc)
target_include_directories(gemma_model_config PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(gemma_model_config PUBLIC gemma_common nlohmann_json::nlohmann_json
    absl::status absl::statusor absl::strings)

add_library(gemma_model_modules STATIC
  layers.cc
  kv_cache.cc
  cuda_graph.cc
  static_decoder.cc
  gemma3.cc
  siglip.cc
  vl_model.cc
  generate.cc
  loss.cc
  tensor_parallel.cc
  projection_split.cc
  lora_adapter.cc
  recompute.cc
  fused_ops.cc
)
target_include_directories(gemma_model_modules PUBLIC ${CMAKE_SOURCE_DIR})
target_link_libraries(gemma_model_modules PUBLIC gemma_model_config gemma_common gemma_torch)
gemma_torch_pch(gemma_model_modules)
if(GEMMA_WITH_CUDA)
  # The fused kernels (model/fused_ops.h), the decode-step attention
  # (model/decode_attention.h) and the few-row GEMV (model/gemv.h).
  add_library(gemma_model_cuda STATIC fused_kernels.cu decode_attention.cu gemv.cu)
  target_include_directories(gemma_model_cuda PRIVATE ${CMAKE_SOURCE_DIR})
  target_link_libraries(gemma_model_cuda PRIVATE gemma_torch)
  set_target_properties(gemma_model_cuda PROPERTIES
    CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON POSITION_INDEPENDENT_CODE ON)
  target_link_libraries(gemma_model_modules PUBLIC gemma_model_cuda)
endif()

gemma_add_test(NAME model_config_test SOURCES config_test.cc
               LIBS gemma_model_config LABELS model)
gemma_add_test(NAME model_layers_test SOURCES layers_test.cc
               LIBS gemma_model_modules LABELS model)
gemma_torch_pch(model_layers_test)
gemma_add_test(NAME model_fused_ops_test SOURCES fused_ops_test.cc
               LIBS gemma_model_modules LABELS model)
gemma_torch_pch(model_fused_ops_test)
gemma_add_test(NAME model_decode_attention_test SOURCES decode_attention_test.cc
               LIBS gemma_model_modules LABELS model)
gemma_torch_pch(model_decode_attention_test)
gemma_add_test(NAME model_gemv_test SOURCES gemv_test.cc
               LIBS gemma_model_modules LABELS model)
gemma_torch_pch(model_gemv_test)
gemma_add_test(NAME model_loss_test SOURCES loss_test.cc
               LIBS gemma_model_modules LABELS model)
gemma_torch_pch(model_loss_test)
gemma_add_test(NAME model_static_decoder_test SOURCES static_decoder_test.cc
               LIBS gemma_model_modules LABELS model)
gemma_torch_pch(model_static_decoder_test)
