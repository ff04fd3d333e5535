# ccache on by default when present. The sloppiness settings let precompiled
# headers (used by the LibTorch targets) hit the cache.
if(GEMMA_USE_CCACHE)
  find_program(GEMMA_CCACHE ccache)
  if(GEMMA_CCACHE)
    set(_launcher ${CMAKE_COMMAND} -E env
        CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
        CCACHE_BASEDIR=${CMAKE_SOURCE_DIR}
        # Debug info would otherwise put the build folder into every hash, and
        # a fresh clone (CI) would miss the whole cache.
        CCACHE_NOHASHDIR=1
        CCACHE_MAXSIZE=20G
        ${GEMMA_CCACHE})
    set(CMAKE_C_COMPILER_LAUNCHER ${_launcher})
    set(CMAKE_CXX_COMPILER_LAUNCHER ${_launcher})
    set(CMAKE_CUDA_COMPILER_LAUNCHER ${_launcher})
    message(STATUS "ccache: ${GEMMA_CCACHE}")
  endif()
endif()
