# Locate the ggml shared libraries shipped by the PyPI package libggml-python.
#
# ggml is never vendored: it comes from the pinned wheel (prebuilt, AVX2) or
# from the same package built from its sdist with -DGGML_NATIVE=ON.  The
# prebuilt wheel installs under libggml/lib64, a source build may use
# libggml/lib; both are searched.  Sets target ggml::ggml and the variable
# RWKV_GGML_RPATH (relative RPATH entries for the installed library).

if(NOT DEFINED RWKV_GGML_PREFIX)
    find_package(Python COMPONENTS Interpreter REQUIRED)
    execute_process(
        COMMAND "${Python_EXECUTABLE}" -c
                "import libggml, os; print(os.path.dirname(libggml.__file__))"
        OUTPUT_VARIABLE RWKV_GGML_PREFIX
        OUTPUT_STRIP_TRAILING_WHITESPACE
        RESULT_VARIABLE _rwkv_ggml_rc)
    if(NOT _rwkv_ggml_rc EQUAL 0 OR NOT RWKV_GGML_PREFIX)
        message(FATAL_ERROR
            "rwkv_cpp: cannot import 'libggml' from ${Python_EXECUTABLE}. "
            "Install it first: pip install libggml-python==0.20.2.post1")
    endif()
endif()

find_package(ggml 0.20 CONFIG REQUIRED
    PATHS "${RWKV_GGML_PREFIX}"
    PATH_SUFFIXES lib64/cmake/ggml lib/cmake/ggml
    NO_DEFAULT_PATH)

message(STATUS "rwkv_cpp: ggml ${ggml_VERSION} from ${RWKV_GGML_PREFIX}")

# The installed library sits in site-packages/rwkv_cpp; ggml in
# site-packages/libggml/{lib64,lib} (Linux), libggml/lib (macOS).  Windows has
# no RPATH: python/rwkv_cpp/_lib.py adds ggml's DLL folders to the search path.
if(APPLE)
    set(RWKV_GGML_RPATH "@loader_path/../libggml/lib")
elseif(WIN32)
    set(RWKV_GGML_RPATH "")
else()
    set(RWKV_GGML_RPATH "$ORIGIN/../libggml/lib64;$ORIGIN/../libggml/lib")
endif()
