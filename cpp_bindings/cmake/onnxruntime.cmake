# Finds ONNX Runtime and defines the imported target onnxruntime::onnxruntime.
#
# 1. -DONNXRUNTIME_ROOT=DIR: a release tarball or a Jetson build (DIR/include, DIR/lib).
# 2. Otherwise: the C API headers from ONNXRUNTIME_INCLUDE_DIR, build/onnxruntime-headers/include (what
#    scripts/fetch_onnxruntime_headers.sh writes; run here when nothing is found) or the system, and
#    the library inside the onnxruntime Python wheel of the Python CMake found.
# The headers' ORT_API_VERSION must not exceed what the library supports (its minor version).
set(ONNXRUNTIME_ROOT "" CACHE PATH "ONNX Runtime install (include/ and lib/), e.g. an unpacked release")
set(ONNXRUNTIME_INCLUDE_DIR "" CACHE PATH "Directory holding onnxruntime_cxx_api.h")
set(ONNXRUNTIME_LIBRARY "" CACHE FILEPATH "libonnxruntime.so to link")

if(ONNXRUNTIME_ROOT)
  find_path(_ort_inc onnxruntime_cxx_api.h
            PATHS ${ONNXRUNTIME_ROOT}/include ${ONNXRUNTIME_ROOT}/include/onnxruntime
                  ${ONNXRUNTIME_ROOT}/include/onnxruntime/core/session NO_DEFAULT_PATH)
  find_library(_ort_lib onnxruntime PATHS ${ONNXRUNTIME_ROOT}/lib ${ONNXRUNTIME_ROOT}/lib64 NO_DEFAULT_PATH)
  if(NOT _ort_inc OR NOT _ort_lib)
    message(FATAL_ERROR "ONNXRUNTIME_ROOT=${ONNXRUNTIME_ROOT} holds no include/onnxruntime_cxx_api.h and lib/libonnxruntime")
  endif()
  set(ONNXRUNTIME_INCLUDE_DIR ${_ort_inc})
  set(ONNXRUNTIME_LIBRARY ${_ort_lib})
endif()

if(NOT ONNXRUNTIME_INCLUDE_DIR)
  set(_fetched ${CMAKE_CURRENT_LIST_DIR}/../../build/onnxruntime-headers/include)
  find_path(_ort_inc onnxruntime_cxx_api.h
            PATHS ${_fetched} ${CMAKE_BINARY_DIR}/onnxruntime-headers/include
                  /usr/include/onnxruntime /usr/local/include/onnxruntime /usr/include /usr/local/include)
  if(NOT _ort_inc AND CMAKE_SYSTEM_NAME STREQUAL "Linux" AND EXISTS /etc/debian_version)
    message(STATUS "ONNX Runtime headers not found: fetching them from this machine's Debian archive")
    execute_process(COMMAND ${CMAKE_CURRENT_LIST_DIR}/../scripts/fetch_onnxruntime_headers.sh
                            ${CMAKE_BINARY_DIR}/onnxruntime-headers RESULT_VARIABLE _rc)
    if(_rc EQUAL 0)
      set(ONNXRUNTIME_INCLUDE_DIR ${CMAKE_BINARY_DIR}/onnxruntime-headers/include)
    endif()
  elseif(_ort_inc)
    set(ONNXRUNTIME_INCLUDE_DIR ${_ort_inc})
  endif()
  unset(_ort_inc CACHE)
endif()
if(NOT ONNXRUNTIME_INCLUDE_DIR OR NOT EXISTS ${ONNXRUNTIME_INCLUDE_DIR}/onnxruntime_cxx_api.h)
  message(FATAL_ERROR "ONNX Runtime headers not found: run cpp_bindings/scripts/fetch_onnxruntime_headers.sh, "
                      "or pass -DONNXRUNTIME_ROOT=DIR or -DONNXRUNTIME_INCLUDE_DIR=DIR")
endif()

if(NOT ONNXRUNTIME_LIBRARY)
  find_package(Python COMPONENTS Interpreter REQUIRED)
  execute_process(
    COMMAND ${Python_EXECUTABLE} -c "import importlib.util, pathlib; s = importlib.util.find_spec('onnxruntime'); print(pathlib.Path(s.origin).parent / 'capi')"
    OUTPUT_VARIABLE _capi OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc ERROR_QUIET)
  file(GLOB _libs "${_capi}/libonnxruntime.so*")
  list(FILTER _libs EXCLUDE REGEX "providers")
  if(NOT _rc EQUAL 0 OR NOT _libs)
    message(FATAL_ERROR "no ONNX Runtime library: install the onnxruntime wheel into ${Python_EXECUTABLE}, "
                        "or pass -DONNXRUNTIME_ROOT=DIR")
  endif()
  list(GET _libs 0 ONNXRUNTIME_LIBRARY)
endif()

# The library's version (libonnxruntime.so.1.MINOR.PATCH, or the realpath of the unversioned link).
get_filename_component(_real ${ONNXRUNTIME_LIBRARY} REALPATH)
get_filename_component(_name ${_real} NAME)
string(REGEX MATCH "so\\.([0-9]+)\\.([0-9]+)" _m "${_name}")
set(_major ${CMAKE_MATCH_1})
set(_minor ${CMAKE_MATCH_2})
file(STRINGS ${ONNXRUNTIME_INCLUDE_DIR}/onnxruntime_c_api.h _api REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX MATCH "[0-9]+" ORT_HEADER_API_VERSION "${_api}")
if(_minor AND ORT_HEADER_API_VERSION GREATER _minor)
  message(FATAL_ERROR "ONNX Runtime headers speak C API ${ORT_HEADER_API_VERSION}, the library ${_name} only up to ${_minor}")
endif()
message(STATUS "ONNX Runtime: ${_real} (1.${_minor}), headers ${ONNXRUNTIME_INCLUDE_DIR} (C API ${ORT_HEADER_API_VERSION})")

# The wheel ships only libonnxruntime.so.1.MINOR.PATCH; its SONAME is libonnxruntime.so.MAJOR. Links
# under both names in the build tree let the linker and the loader find it there.
set(ORT_LIB_DIR ${CMAKE_BINARY_DIR}/onnxruntime-lib)
file(MAKE_DIRECTORY ${ORT_LIB_DIR})
if(_major)
  file(CREATE_LINK ${_real} ${ORT_LIB_DIR}/libonnxruntime.so.${_major} SYMBOLIC)
  set(ONNXRUNTIME_SONAME libonnxruntime.so.${_major})
else()
  set(ONNXRUNTIME_SONAME ${_name})
endif()
file(CREATE_LINK ${_real} ${ORT_LIB_DIR}/libonnxruntime.so SYMBOLIC)
set(ORT_REAL_LIBRARY ${_real})

add_library(onnxruntime::onnxruntime SHARED IMPORTED)
set_target_properties(onnxruntime::onnxruntime PROPERTIES
  IMPORTED_LOCATION ${ORT_LIB_DIR}/libonnxruntime.so
  IMPORTED_SONAME ${ONNXRUNTIME_SONAME}
  INTERFACE_INCLUDE_DIRECTORIES ${ONNXRUNTIME_INCLUDE_DIR})
