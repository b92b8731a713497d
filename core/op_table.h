// The op table: one row per op (name, family, flags, kernels per device, and the columns later
// layers fill: gradcheck case, sharding rule). Also the two hooks every op entry runs: the
// distributed-tensor hook and the anomaly hook. Layers above core fill them at start-up, so core
// never includes autograd, ops or dist.
#pragma once
#include <any>
#include <array>
#include <functional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "profiler.h"
#include "tensor.h"

namespace coil {

// Non-tensor arguments of an op, boxed so generic callers (the dist layer, the autograd engine,
// tests) can call any op by name.
using AttrValue = std::variant<std::monostate, int64_t, double, bool, Shape, std::string, DType>;
struct Attr {
  std::string name;
  AttrValue value;
};
using Attrs = std::vector<Attr>;
template <class T>
T attr(const Attrs& attrs, const std::string& name) {
  for (const Attr& a : attrs)
    if (a.name == name) {
      COIL_CHECK(std::holds_alternative<T>(a.value), "attr: '", name, "' has another type");
      return std::get<T>(a.value);
    }
  fail("attr: missing attribute '", name, "'");
}
template <class T>
T attr_or(const Attrs& attrs, const std::string& name, T def) {
  for (const Attr& a : attrs)
    if (a.name == name && std::holds_alternative<T>(a.value)) return std::get<T>(a.value);
  return def;
}

using BoxedFn = std::function<TensorList(const TensorList& inputs, const Attrs& attrs)>;

// A float64 problem on which gradcheck compares analytic and numeric gradients.
struct GradcheckCase {
  TensorList inputs;  // inputs with requires_grad set are checked
  std::function<Tensor(const TensorList&)> fn;
  double eps = 1e-6, atol = 1e-5, rtol = 1e-3;
};

struct OpInfo {
  std::string name;
  std::string family;  // the ops/<family>.cpp file that defines it
  bool differentiable = true;
  bool composite = false;  // built from other ops: runs wherever they do, needs no kernels
  BoxedFn boxed;           // call by name with boxed attributes
  std::array<const void*, kNumDeviceTypes> kernels{};  // per family signature, see ops/
  std::function<GradcheckCase()> gradcheck;            // required for differentiable ops
  std::any sharding_rule;                              // filled by dist/rules (the dist layer)
  template <class Fn>
  void set_kernel(DeviceType d, Fn* fn) {
    kernels[static_cast<int>(d)] = reinterpret_cast<const void*>(fn);
  }
  const void* kernel(DeviceType d) const { return kernels[static_cast<int>(d)]; }
  bool has_kernel(DeviceType d) const { return kernel(d) != nullptr; }
};

// Registers the op family's row; registering one name from two families is an error.
OpInfo& register_op(const std::string& name, const std::string& family);
// The row for `name`, created if absent: device backends add kernels through it whatever the
// static-initialisation order.
OpInfo& op_row(const std::string& name);
const OpInfo& op_info(const std::string& name);  // throws coil::Error when absent
OpInfo* find_op(const std::string& name);        // mutable: later layers fill columns
std::vector<const OpInfo*> all_ops();

// Runs a registration function at static-initialisation time: one per ops/<family>.cpp.
struct OpRegistrar {
  explicit OpRegistrar(void (*fn)()) { fn(); }
};

// A kernel of the op table, called as the function it is; the call is timed under the op's name
// when the profiler (core/profiler.h) is on.
template <class Fn>
struct KernelCall;
template <class R, class... A>
struct KernelCall<R (*)(A...)> {
  R (*fn)(A...);
  const OpInfo* op;
  R operator()(A... args) const {
    if (!profiler::enabled()) return fn(std::forward<A>(args)...);
    profiler::Scope timed(op->name.c_str());
    return fn(std::forward<A>(args)...);
  }
};

// The kernel of `op` for the device of `t`, or an error naming both.
template <class Fn>
KernelCall<Fn> kernel_for(const OpInfo& op, Device d) {
  const void* k = op.kernel(d.type);
  COIL_CHECK(k, op.name, ": no kernel for device ", d, " in this build");
  return {reinterpret_cast<Fn>(const_cast<void*>(k)), &op};
}

// ---- distributed-tensor hook ----
using DistHandler = std::function<TensorList(const OpInfo&, const TensorList&, const Attrs&)>;
void set_dist_handler(DistHandler h);
inline bool any_distributed(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->defined() && t->is_distributed()) return true;
  return false;
}
// Hands an op whose inputs include a DTensor to the handler the dist layer registered.
TensorList dist_dispatch(const OpInfo& op, const TensorList& inputs, const Attrs& attrs);

// ---- anomaly hook ----
using AnomalyCheck = void (*)(const std::string& where, const TensorList& inputs,
                              const TensorList& outputs);
void set_anomaly_check(AnomalyCheck c);
bool anomaly_mode();
void set_anomaly_mode(bool on);
// Called by every op entry on its outputs; a no-op unless anomaly mode is on.
inline void check_anomaly(const std::string& where, const TensorList& inputs,
                          const TensorList& outputs);
// Names the backward node being run, so an anomaly inside its formula says whose it is.
class AnomalyContext {
 public:
  explicit AnomalyContext(const std::string& node);
  ~AnomalyContext();
  AnomalyContext(const AnomalyContext&) = delete;
  AnomalyContext& operator=(const AnomalyContext&) = delete;

 private:
  const std::string* prev_;
};
namespace detail {
extern bool g_anomaly_mode;
void run_anomaly_check(const std::string&, const TensorList&, const TensorList&);
}  // namespace detail
inline void check_anomaly(const std::string& where, const TensorList& inputs,
                          const TensorList& outputs) {
  if (__builtin_expect(detail::g_anomaly_mode, 0))
    detail::run_anomaly_check(where, inputs, outputs);
}

}  // namespace coil
