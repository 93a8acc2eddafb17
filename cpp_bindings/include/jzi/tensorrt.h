// Native TensorRT backend (runtime/backends/tensorrt.py): the bundle's serialized engines, the
// TensorRT 10/11 named-tensor API (setInputShape, setTensorAddress, enqueueV3) on one CUDA stream.
//
// The decoder step has static shapes for a given batch, so it is captured as a CUDA graph (copies of
// the step inputs to the device, the engine, the copy of the logits back) twice: once per direction
// of the KV-cache swap. Greedy decoding costs one graph launch per step; beam search gathers cache
// rows with device-to-device copies. Compiled only with -DJZI_WITH_TENSORRT=ON (TensorRT and CUDA
// headers present); otherwise tensorrt_availability says why not and nothing else is built.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "jzi/backend.h"

namespace jzi {

// "ok", or one line saying why the native TensorRT backend cannot run here.
std::string tensorrt_availability(const Manifest& manifest);
// The backend; throws Error(Backend) when tensorrt_availability is not "ok".
std::unique_ptr<Backend> open_tensorrt_backend(const Manifest& manifest, const std::vector<std::string>& graphs);
// Whether this build has the native TensorRT backend compiled in.
bool tensorrt_compiled();

}  // namespace jzi
