// CUDA streams and events, as in PyTorch's torch.cuda.Stream / Event.
//
//   coil::Stream side = coil::Stream::create(Device(kCUDA, 0));
//   {
//     coil::StreamGuard g(side);       // coil's work on cuda:0 from this thread goes to `side`
//     y = matmul(a, b);
//   }
//   coil::Event done(Device(kCUDA, 0));
//   done.record(side);
//   coil::Stream::current(Device(kCUDA, 0)).wait(done);  // later work waits for y
//
// Every kernel and copy coil issues on a device goes to that device's current stream: coil's own
// default stream, unless a StreamGuard on this thread names another. Work on one stream runs in
// order; streams are ordered against each other only through events (or synchronize). A
// tensor's memory, once freed, is reused only by allocations on the stream it was allocated on,
// so a tensor that another stream still reads must be kept alive until that stream is done with
// it (record an event there and wait for it), or be marked with Tensor::record_stream. CPU
// devices have no streams: asking for one is an error.
#pragma once
#include <memory>

#include "device.h"

namespace coil {

class Event;

class Stream {
 public:
  Stream() = default;  // undefined
  // A new stream on the CUDA device d; it lives while a copy of this handle does (its queued
  // work is finished first).
  static Stream create(Device d);
  // The stream coil's work on d goes to from this thread, and coil's own stream of d.
  static Stream current(Device d);
  static Stream default_stream(Device d);

  bool defined() const { return handle_ != nullptr; }
  Device device() const { return device_; }
  void synchronize() const;                 // waits for all work queued so far
  bool query() const;                       // true when all queued work is done
  void wait(const Event& e) const;          // work queued here later waits for e
  void* native() const { return handle_; }  // the cudaStream_t
  bool operator==(const Stream& o) const { return handle_ == o.handle_ && device_ == o.device_; }
  bool operator!=(const Stream& o) const { return !(*this == o); }

 private:
  Stream(Device d, void* h, std::shared_ptr<void> owner)
      : device_(d), handle_(h), owner_(std::move(owner)) {}
  Device device_;
  void* handle_ = nullptr;
  std::shared_ptr<void> owner_;  // destroys a created stream with its last handle
};

// Makes s the current stream of its device on this thread, for the guard's lifetime.
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& s);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream prev_;
};

// A point in a stream's work: record() marks it, synchronize() waits for it on the host,
// Stream::wait makes another stream wait for it, elapsed_ms times two of them (timing events).
class Event {
 public:
  explicit Event(Device d, bool timing = false);
  void record(const Stream& s);
  void record();  // on the device's current stream
  void synchronize() const;
  bool query() const;  // true when the recorded work is done (or nothing was recorded)
  // Milliseconds from this event to end; both recorded and done, both made with timing.
  float elapsed_ms(const Event& end) const;
  Device device() const { return device_; }
  void* native() const { return handle_.get(); }  // the cudaEvent_t

 private:
  Device device_;
  bool timing_ = false, recorded_ = false;
  std::shared_ptr<void> handle_;
};

}  // namespace coil
