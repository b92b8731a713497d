#include "data_parallel.h"

#include <chrono>
#include <mutex>

#include "../autograd/grad_mode.h"
#include "../dist/dtensor.h"
#include "../ops/binary.h"
#include "../ops/creation.h"

namespace coil::nn {

struct DataParallel::State {
  struct Slot {
    Tensor param;
    int bucket = 0;
    int64_t offset = 0;  // in the bucket's buffer, elements
    bool ready = false;
  };
  struct Bucket {
    Tensor buffer;  // flat, the parameters' dtype
    std::vector<int> slots;
    int pending = 0;
    dist::WorkPtr work;
  };
  dist::GroupPtr group, shard_replicas;
  std::vector<Tensor> sharded;  // DTensor parameters: outside the buckets
  std::vector<Slot> slots;
  std::vector<Bucket> buckets;
  bool active = true;
  bool step_open = false;  // a gradient of this step has arrived (events restart then)
  double exposed_ms = 0;
  mutable std::mutex mu;
  std::vector<std::string> events;

  void launch(int b) {
    Bucket& k = buckets[b];
    k.work = group->all_reduce(k.buffer, dist::ReduceOp::kAvg);
    std::lock_guard<std::mutex> lk(mu);
    events.push_back("launch " + std::to_string(b));
  }

  // Called by a parameter's gradient hook: its gradient (the one .grad is about to hold).
  void ready(int s, const Tensor& g) {
    if (!active) return;
    Slot& slot = slots[s];
    if (slot.ready) return;
    if (!step_open) {
      std::lock_guard<std::mutex> lk(mu);
      events.clear();
      step_open = true;
    }
    Bucket& k = buckets[slot.bucket];
    Tensor dst = k.buffer.narrow(0, slot.offset, slot.param.numel());
    {
      NoGradGuard ng;
      Tensor old = slot.param.grad();
      Tensor flat = g.reshape({-1});
      if (old.defined())
        dst.copy_(old.reshape({-1}).add(flat));
      else
        dst.copy_(flat);
    }
    slot.ready = true;
    if (--k.pending == 0) launch(slot.bucket);
  }
};

DataParallel::DataParallel(Module& module, DataParallelOptions o)
    : state_(std::make_shared<State>()) {
  State& st = *state_;
  st.group = o.group ? o.group : dist::world();
  st.shard_replicas = o.shard_replicas;
  std::vector<Tensor> params;
  for (const Tensor& p : module.parameters()) {
    if (!p.requires_grad()) continue;
    (dist::is_dtensor(p) ? st.sharded : params).push_back(p);
  }
  if (o.broadcast_init) {
    NoGradGuard ng;
    for (Tensor p : module.parameters()) {
      if (!dist::is_dtensor(p)) {
        st.group->broadcast(p, 0, dist::blocking())->wait();
      } else if (st.shard_replicas) {  // a piece: from the first rank that holds it too
        Tensor local = dist::to_local(p);
        st.shard_replicas->broadcast(local, 0, dist::blocking())->wait();
      }
    }
    for (auto& [name, b] : module.named_buffers()) {
      Tensor t = b;
      st.group->broadcast(t, 0, dist::blocking())->wait();
    }
  }
  // Buckets in reverse registration order (the order backward tends to produce gradients),
  // one dtype per bucket, up to bucket_mb each.
  const int64_t cap = static_cast<int64_t>(o.bucket_mb * 1024 * 1024);
  std::vector<std::vector<int>> groups;
  std::vector<int64_t> sizes;
  std::vector<DType> types;
  int64_t bytes = 0;
  for (int i = static_cast<int>(params.size()) - 1; i >= 0; --i) {
    const Tensor& p = params[i];
    const int64_t nb = p.numel() * static_cast<int64_t>(p.element_size());
    if (groups.empty() || types.back() != p.dtype() || (bytes > 0 && bytes + nb > cap)) {
      groups.emplace_back();
      sizes.push_back(0);
      types.push_back(p.dtype());
      bytes = 0;
    }
    State::Slot slot;
    slot.param = p;
    slot.bucket = static_cast<int>(groups.size()) - 1;
    slot.offset = sizes.back();
    sizes.back() += p.numel();
    bytes += nb;
    groups.back().push_back(static_cast<int>(st.slots.size()));
    st.slots.push_back(slot);
  }
  for (size_t b = 0; b < groups.size(); ++b) {
    State::Bucket k;
    k.buffer = zeros({sizes[b]}, Options(types[b]));
    k.slots = groups[b];
    k.pending = static_cast<int>(groups[b].size());
    st.buckets.push_back(std::move(k));
  }
  // The hooks hold the state weakly: a hook left on a parameter after this object is gone
  // does nothing.
  std::weak_ptr<State> weak = state_;
  for (size_t s = 0; s < st.slots.size(); ++s)
    st.slots[s].param.register_hook([weak, s](const Tensor& g) {
      if (auto locked = weak.lock()) locked->ready(static_cast<int>(s), g);
      return Tensor();
    });
}

DataParallel::~DataParallel() {
  // a step in flight finishes before the buffers go away
  for (auto& k : state_->buckets)
    if (k.work) k.work->wait();
  state_->active = false;
}

void DataParallel::finish_gradient_sync() {
  State& st = *state_;
  // Buckets with parameters that got no gradient: those count as zero (or their old .grad).
  for (size_t b = 0; b < st.buckets.size(); ++b) {
    State::Bucket& k = st.buckets[b];
    if (k.pending == 0) continue;
    NoGradGuard ng;
    for (int s : k.slots) {
      State::Slot& slot = st.slots[s];
      if (slot.ready) continue;
      Tensor dst = k.buffer.narrow(0, slot.offset, slot.param.numel());
      Tensor old = slot.param.grad();
      if (old.defined())
        dst.copy_(old.reshape({-1}));
      else
        dst.zero_();
    }
    k.pending = 0;
    st.launch(static_cast<int>(b));
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& k : st.buckets) k.work->wait();
  st.exposed_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  NoGradGuard ng;
  for (auto& k : st.buckets) {
    for (int s : k.slots) {
      State::Slot& slot = st.slots[s];
      Tensor avg = k.buffer.narrow(0, slot.offset, slot.param.numel()).reshape(slot.param.sizes());
      Tensor g = slot.param.grad();
      if (g.defined())
        g.copy_(avg);
      else if (slot.ready)
        slot.param.set_grad(avg.clone());
      slot.ready = false;
    }
    k.pending = static_cast<int>(k.slots.size());
    k.work = nullptr;
  }
  // sharded parameters: this piece's gradient summed over its replicas, over the group's size
  const double scale = 1.0 / static_cast<double>(st.group->size());
  for (const Tensor& p : st.sharded) {
    Tensor g = p.grad();
    if (!g.defined()) continue;
    Tensor local = dist::is_dtensor(g) ? dist::to_local(g) : g;
    if (st.shard_replicas)
      st.shard_replicas->all_reduce(local, dist::ReduceOp::kSum, dist::blocking())->wait();
    local.copy_(local * scale);
  }
  st.step_open = false;
}

int DataParallel::num_buckets() const { return static_cast<int>(state_->buckets.size()); }
double DataParallel::exposed_comm_ms() const { return state_->exposed_ms; }

std::vector<std::string> DataParallel::events() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->events;
}
void DataParallel::mark(const std::string& event) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->events.push_back(event);
}

}  // namespace coil::nn
