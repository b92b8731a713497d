// safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON header
//   {"__metadata__": {str: str}, "<name>": {"dtype": "F32", "shape": [..],
//    "data_offsets": [begin, end]}, ...}
// then the data region, which the tensors' byte ranges must cover exactly, without holes or
// overlaps. dtypes: F32 F64 BF16 F16 I32 I64 BOOL (coil's); any other is an error naming the
// tensor. Bad files (truncated, absurd header, bad JSON, wrong sizes, offsets outside the data)
// throw coil::Error naming the file and the tensor, never crash.
//
// Checksums: save_safetensors writes a CRC-32C per tensor into __metadata__ ("coil.crc32c.<name>",
// 8 hex digits); load_safetensors checks every one it finds (files from elsewhere have none) and
// reports a mismatch as coil::Error naming the file and the tensor. They are not part of the
// returned metadata. Checking reads every byte of the file once.
//
// Loading maps the file (mmap, MAP_PRIVATE) and the returned tensors view the mapping, which
// they keep alive; a tensor whose bytes are not aligned for its dtype is copied instead. Treat
// loaded tensors as read-only: clone() before modifying one (a write would stay private to this
// process, copy-on-write, never reaching the file, but would be seen by every view of it).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../../core/tensor.h"

namespace coil::io {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;   // ordered
using Metadata = std::vector<std::pair<std::string, std::string>>;  // ordered

struct SafetensorsFile {
  NamedTensors tensors;  // in header order (a directory: shard by shard)
  Metadata metadata;     // "__metadata__" (a directory: the first shard's)

  const Tensor* find(const std::string& name) const;  // nullptr if absent
  const Tensor& at(const std::string& name) const;    // coil::Error if absent
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  std::vector<std::string> names() const;
  size_t size() const { return tensors.size(); }
};

// CRC-32C (Castagnoli) of n bytes, the checksum of each saved tensor.
uint32_t crc32c(const void* data, size_t n);

// The safetensors name of a dtype ("F32") and back (coil::Error for names coil lacks).
const char* safetensors_dtype_name(DType t);

SafetensorsFile load_safetensors(const std::string& path);

// Writes contiguous copies of the tensors (any layout, any device) in the given order, header
// padded with spaces so the data starts 8-byte aligned, atomically (write_file_atomic).
// Names must be unique, non-empty and not "__metadata__".
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const Metadata& metadata = {});

// Hugging Face's layout: dir/model.safetensors.index.json ({"metadata": {...}, "weight_map":
// {name: shard file}}) and its shards, else dir/model.safetensors. Every name of the weight map
// must be in its shard, no tensor may be in two shards, shard names must stay inside dir.
SafetensorsFile load_safetensors_dir(const std::string& dir);

// As transformers' save_pretrained: shards of at most max_shard_bytes of tensor data (a larger
// tensor gets a shard of its own) named model-00001-of-0000N.safetensors plus
// model.safetensors.index.json (weight_map sorted by name, metadata.total_size), or a single
// model.safetensors when everything fits in one. Creates dir; removes the index or shard files of
// an earlier save that the new one does not use. Default metadata {"format": "pt"} is what
// transformers expects to find.
void save_safetensors_sharded(const std::string& dir, const NamedTensors& tensors,
                              int64_t max_shard_bytes,
                              const Metadata& metadata = {{"format", "pt"}});

}  // namespace coil::io
