// Small file helpers shared by nn/io (safetensors, config.json) and training checkpoints.
#pragma once
#include <cstdio>
#include <functional>
#include <string>

namespace coil::io {

// Writes a file so that readers see either the old file or the complete new one: `write` fills
// path + ".tmp.<pid>", which is flushed and fsync'ed; the directory is fsync'ed, the temporary
// renamed onto path, and the directory fsync'ed again. A process killed at any point leaves the
// old file or the new one complete (tests/programs/kill_safety.cpp kills writers to show it). If
// `write` throws or any step fails, the temporary is removed, the old file is left as it was, and
// coil::Error names the path (other exceptions are wrapped into coil::Error). `write` may call
// fwrite freely: a stream error is detected afterwards.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);

// The whole file as bytes; coil::Error naming the path if it cannot be read.
std::string read_file(const std::string& path);
// write_file_atomic of a whole text (config.json, metrics, plots).
void write_text_file_atomic(const std::string& path, const std::string& text);

}  // namespace coil::io
