#include "op_table.h"

#include <map>
#include <memory>
#include <mutex>

namespace coil {
namespace {
struct Table {
  std::map<std::string, std::unique_ptr<OpInfo>> rows;
};
Table& table() {
  static Table* t = new Table();  // never destroyed: ops may run during static teardown
  return *t;
}
DistHandler& dist_handler() {
  static DistHandler h;
  return h;
}
AnomalyCheck g_anomaly_check = nullptr;
}  // namespace

OpInfo& op_row(const std::string& name) {
  auto& rows = table().rows;
  auto it = rows.find(name);
  if (it != rows.end()) return *it->second;
  auto row = std::make_unique<OpInfo>();
  row->name = name;
  OpInfo& ref = *row;
  rows.emplace(name, std::move(row));
  return ref;
}

OpInfo& register_op(const std::string& name, const std::string& family) {
  OpInfo& row = op_row(name);
  COIL_CHECK(row.family.empty(), "register_op: op '", name, "' registered by both ", row.family,
             " and ", family);
  row.family = family;
  return row;
}

OpInfo* find_op(const std::string& name) {
  auto it = table().rows.find(name);
  return it == table().rows.end() ? nullptr : it->second.get();
}

const OpInfo& op_info(const std::string& name) {
  OpInfo* o = find_op(name);
  COIL_CHECK(o && !o->family.empty(), "op_info: no op named '", name, "' is registered");
  return *o;
}

std::vector<const OpInfo*> all_ops() {
  std::vector<const OpInfo*> v;
  for (auto& [n, row] : table().rows) v.push_back(row.get());
  return v;
}

void set_dist_handler(DistHandler h) { dist_handler() = std::move(h); }

TensorList dist_dispatch(const OpInfo& op, const TensorList& inputs, const Attrs& attrs) {
  COIL_CHECK(dist_handler(), op.name, ": got a distributed tensor, but no distributed handler is ",
             "registered (initialise coil's dist layer first)");
  return dist_handler()(op, inputs, attrs);
}

namespace {
thread_local const std::string* t_anomaly_node = nullptr;
}
AnomalyContext::AnomalyContext(const std::string& node) : prev_(t_anomaly_node) {
  t_anomaly_node = &node;
}
AnomalyContext::~AnomalyContext() { t_anomaly_node = prev_; }

namespace detail {
bool g_anomaly_mode = false;
void run_anomaly_check(const std::string& where, const TensorList& in, const TensorList& out) {
  if (!g_anomaly_check) return;
  if (t_anomaly_node) {
    g_anomaly_check(where + " (in the backward of " + *t_anomaly_node + ")", in, out);
  } else {
    g_anomaly_check(where, in, out);
  }
}
}  // namespace detail

void set_anomaly_check(AnomalyCheck c) { g_anomaly_check = c; }
bool anomaly_mode() { return detail::g_anomaly_mode; }
void set_anomaly_mode(bool on) { detail::g_anomaly_mode = on; }

}  // namespace coil
