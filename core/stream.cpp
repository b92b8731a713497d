// Streams and events over the CUDA backend's hooks (core/device.h); clear errors without one.
#include "stream.h"

#include "error.h"

namespace coil {

namespace {

const CudaHooks& hooks_for(const char* what, Device d) {
  COIL_CHECK(d.is_cuda(), what, ": ", d, " has no streams (only CUDA devices do)");
  const CudaHooks& h = cuda_hooks();
  COIL_CHECK(h.stream_create != nullptr, what, ": this build of coil has no CUDA backend");
  const int n = cuda_device_count();
  COIL_CHECK(d.index >= 0 && d.index < n, what, ": device ", d, " does not exist (", n, " GPU",
             n == 1 ? "" : "s", " usable)");
  return h;
}

}  // namespace

Stream Stream::create(Device d) {
  const CudaHooks& h = hooks_for("Stream::create", d);
  void* s = h.stream_create(d.index);
  const int index = d.index;
  auto destroy = h.stream_destroy;
  return Stream(d, s, std::shared_ptr<void>(s, [index, destroy](void* p) { destroy(index, p); }));
}

Stream Stream::current(Device d) {
  const CudaHooks& h = hooks_for("Stream::current", d);
  return Stream(d, h.stream_current(d.index), nullptr);
}

Stream Stream::default_stream(Device d) {
  const CudaHooks& h = hooks_for("Stream::default_stream", d);
  return Stream(d, h.stream_default(d.index), nullptr);
}

void Stream::synchronize() const {
  COIL_CHECK(defined(), "Stream::synchronize: the stream is undefined");
  cuda_hooks().stream_synchronize(device_.index, handle_);
}

bool Stream::query() const {
  COIL_CHECK(defined(), "Stream::query: the stream is undefined");
  return cuda_hooks().stream_query(device_.index, handle_);
}

void Stream::wait(const Event& e) const {
  COIL_CHECK(defined(), "Stream::wait: the stream is undefined");
  COIL_CHECK(e.device() == device_, "Stream::wait: the event is on ", e.device(),
             ", the stream on ", device_);
  cuda_hooks().stream_wait_event(device_.index, handle_, e.native());
}

StreamGuard::StreamGuard(const Stream& s) {
  COIL_CHECK(s.defined(), "StreamGuard: the stream is undefined");
  prev_ = Stream::current(s.device());
  cuda_hooks().stream_set_current(s.device().index, s.native());
}

StreamGuard::~StreamGuard() {
  cuda_hooks().stream_set_current(prev_.device().index, prev_.native());
}

Event::Event(Device d, bool timing) : device_(d), timing_(timing) {
  const CudaHooks& h = hooks_for("Event", d);
  void* e = h.event_create(d.index, timing);
  const int index = d.index;
  auto destroy = h.event_destroy;
  handle_ = std::shared_ptr<void>(e, [index, destroy](void* p) { destroy(index, p); });
}

void Event::record(const Stream& s) {
  COIL_CHECK(s.defined(), "Event::record: the stream is undefined");
  COIL_CHECK(s.device() == device_, "Event::record: the event is on ", device_, ", the stream on ",
             s.device());
  cuda_hooks().event_record(device_.index, handle_.get(), s.native());
  recorded_ = true;
}

void Event::record() { record(Stream::current(device_)); }

void Event::synchronize() const { cuda_hooks().event_synchronize(device_.index, handle_.get()); }

bool Event::query() const { return cuda_hooks().event_query(device_.index, handle_.get()); }

float Event::elapsed_ms(const Event& end) const {
  COIL_CHECK(timing_ && end.timing_, "Event::elapsed_ms: both events must be made with timing");
  COIL_CHECK(recorded_ && end.recorded_, "Event::elapsed_ms: both events must be recorded");
  COIL_CHECK(device_ == end.device_, "Event::elapsed_ms: the events are on ", device_, " and ",
             end.device_);
  return cuda_hooks().event_elapsed_ms(device_.index, handle_.get(), end.handle_.get());
}

}  // namespace coil
