// Walks the op table: every op must have each column filled, unless tests/registry_pending.txt
// names the issue that will fill it; a pending line that is no longer true fails too, so the
// list only shrinks.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "test_util.h"

using namespace coil;

namespace {
struct Pending {
  std::string op, column, issue;
};
std::vector<Pending> read_pending() {
  std::ifstream in(COIL_TEST_SOURCE_DIR "/registry_pending.txt");
  REQUIRE_MESSAGE(in.good(), "cannot open registry_pending.txt");
  std::vector<Pending> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    Pending p;
    ls >> p.op >> p.column >> p.issue;
    REQUIRE_MESSAGE(!p.issue.empty(), "malformed pending line: " << line);
    out.push_back(p);
  }
  return out;
}
}  // namespace

TEST_SUITE("registry") {
  TEST_CASE("every op has its columns, or a pending line naming the issue") {
    std::vector<Pending> pending = read_pending();
    std::map<std::pair<std::string, std::string>, bool> used;
    for (auto& p : pending) used[{p.op, p.column}] = false;
    auto missing = [&](const std::string& op, const std::string& col) {
      auto it = used.find({op, col});
      if (it != used.end()) {
        it->second = true;
        return;
      }
      // COIL_REGISTRY_DUMP=1 prints the missing lines in the pending file's format
      if (std::getenv("COIL_REGISTRY_DUMP"))
        std::printf("PENDING %s %s\n", op.c_str(), col.c_str());
      FAIL_CHECK("op '" << op << "' lacks column '" << col
                        << "' and is not in registry_pending.txt");
    };
    std::set<std::string> names;
    for (const OpInfo* op : all_ops()) {
      CAPTURE(op->name);
      names.insert(op->name);
      CHECK_MESSAGE(!op->family.empty(),
                    "op row '" << op->name << "' was never registered by a family");
      CHECK_MESSAGE(op->boxed, "op '" << op->name << "' has no boxed form");
      if (!op->composite)
        CHECK_MESSAGE(op->has_kernel(kCPU), "op '" << op->name << "' has no CPU kernel");
      if (op->differentiable && !op->gradcheck) missing(op->name, "gradcheck");
      if (!op->sharding_rule.has_value()) missing(op->name, "sharding_rule");
      // A build without the CUDA backend has no CUDA column to check (CI builds with it).
      if (cuda_available() && !op->composite && !op->has_kernel(kCUDA))
        missing(op->name, "cuda_kernel");
    }
    for (auto& [key, was_used] : used) {
      if (key.second == "cuda_kernel" && !cuda_available()) continue;
      CHECK_MESSAGE(names.count(key.first),
                    "registry_pending.txt names op '" << key.first << "', which does not exist");
      CHECK_MESSAGE(was_used, "registry_pending.txt says '"
                                  << key.first << "' lacks '" << key.second
                                  << "', but it has it now: delete the line");
    }
  }

  TEST_CASE("every gradcheck case passes") {
    for (const OpInfo* op : all_ops()) {
      if (!op->gradcheck) continue;
      CAPTURE(op->name);
      manual_seed(11);
      GradcheckCase c = op->gradcheck();
      bool any = false;
      for (const Tensor& t : c.inputs) any |= t.defined() && t.requires_grad();
      CHECK_MESSAGE(any, "gradcheck case of '" << op->name << "' checks no input");
      auto r = gradcheck(c.fn, c.inputs, c.eps, c.atol, c.rtol);
      CHECK_MESSAGE(r.ok, op->name << ": " << r.message);
    }
  }

  TEST_CASE("ops are reachable by name with boxed attributes") {
    Tensor x = tensor(std::vector<float>{1, 2, 3, 4}, {2, 2});
    Tensor s = op_info("sum").boxed({x}, {{"dims", Shape{1}}, {"keepdim", false}})[0];
    ct::check_close(s, {3, 7}, 0, 0);
    ct::check_error([] { op_info("no_such_op"); }, {"op_info", "no_such_op"});
  }

  TEST_CASE("the distributed hook receives any op whose input is a DTensor") {
    struct FakeSpec : DistSpecBase {};
    std::string seen;
    set_dist_handler([&](const OpInfo& op, const TensorList& in, const Attrs&) {
      seen = op.name;
      return TensorList{in[0]};
    });
    Tensor x = ones({2});
    x.impl().dist = std::make_shared<FakeSpec>();
    exp(x);
    CHECK(seen == "exp");
    add(ones({2}), x);
    CHECK(seen == "add");
    sum(x, {0});
    CHECK(seen == "sum");
    set_dist_handler(nullptr);
    ct::check_error([&] { exp(x); }, {"exp", "distributed", "handler"});
  }
}
