#include "file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>

#include "../../core/error.h"

namespace coil::io {

namespace {
std::string errno_str(int e) { return std::strerror(e); }

// Durability of the rename itself: best effort (some filesystems refuse fsync on a directory).
void fsync_parent_dir(const std::string& path) {
  auto slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}
}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  COIL_CHECK(f, "write_file_atomic: cannot create '", tmp, "': ", errno_str(errno));
  auto abandon = [&] {
    if (f) std::fclose(f);
    f = nullptr;
    std::remove(tmp.c_str());
  };
  try {
    write(f);
    if (std::ferror(f)) fail("write_file_atomic: writing '", tmp, "' failed: ", errno_str(errno));
    if (std::fflush(f) != 0)
      fail("write_file_atomic: flushing '", tmp, "' failed: ", errno_str(errno));
    if (::fsync(::fileno(f)) != 0)
      fail("write_file_atomic: fsync of '", tmp, "' failed: ", errno_str(errno));
    int rc = std::fclose(f);
    f = nullptr;
    if (rc != 0) fail("write_file_atomic: closing '", tmp, "' failed: ", errno_str(errno));
    // The directory too, before and after the rename: the temporary's entry is durable before
    // it replaces the old file, and the rename itself is durable once this returns.
    fsync_parent_dir(path);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      fail("write_file_atomic: renaming '", tmp, "' onto '", path, "' failed: ", errno_str(errno));
  } catch (const Error&) {
    abandon();
    throw;
  } catch (const std::exception& e) {
    abandon();
    fail("write_file_atomic: writing '", path, "' failed: ", e.what());
  } catch (...) {
    abandon();
    fail("write_file_atomic: writing '", path, "' failed with an unknown exception");
  }
  fsync_parent_dir(path);
}

void write_text_file_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::FILE* f) { std::fwrite(text.data(), 1, text.size(), f); });
}

std::string read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  COIL_CHECK(f, "read_file: cannot open '", path, "': ", errno_str(errno));
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  bool bad = std::ferror(f);
  int e = errno;
  std::fclose(f);
  COIL_CHECK(!bad, "read_file: reading '", path, "' failed: ", errno_str(e));
  return out;
}

}  // namespace coil::io
