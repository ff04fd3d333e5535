# Every third-party dependency is found here, once.
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(Protobuf REQUIRED)           # CMake's module (Debian ships no config)
find_package(gRPC CONFIG REQUIRED)        # Debian ships gRPCConfig.cmake
find_package(RocksDB CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_program(GEMMA_GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

if(GEMMA_BUILD_TESTS)
  find_package(GTest CONFIG REQUIRED)
  include(GoogleTest)
endif()
if(GEMMA_BUILD_BENCH)
  find_package(benchmark CONFIG REQUIRED)
endif()

if(GEMMA_WITH_TORCH)
  # OpenCV from Debian's per-module -dev packages (the libopencv-dev
  # metapackage, which carries OpenCVConfig.cmake, pulls ~150 packages).
  find_path(OPENCV_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4 REQUIRED)
  add_library(gemma_opencv INTERFACE)
  target_include_directories(gemma_opencv SYSTEM INTERFACE ${OPENCV_INCLUDE_DIR})
  foreach(_m core imgproc imgcodecs)
    find_library(OPENCV_${_m}_LIBRARY opencv_${_m} REQUIRED)
    target_link_libraries(gemma_opencv INTERFACE ${OPENCV_${_m}_LIBRARY})
  endforeach()
  find_library(SENTENCEPIECE_LIBRARY sentencepiece REQUIRED)
  find_library(SENTENCEPIECE_TRAIN_LIBRARY sentencepiece_train REQUIRED)
  find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h REQUIRED)
  include(GemmaTorch)
endif()
