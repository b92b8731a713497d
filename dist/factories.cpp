#include "factories.h"

#include "sharding.h"

namespace coil::dist {
namespace {
Tensor make(const char* op, Attrs attrs, const Shape& shape, const DeviceMesh& mesh,
            const Placements& p, const Options& o) {
  attrs.push_back({"shape", shape});
  attrs.push_back({"dtype", o.dtype});
  COIL_CHECK(o.device.type == kCPU, "dist::", op, ": DTensors live on CPU in this build, got ",
             o.device);
  Tensor t = make_factory(op, attrs, mesh, p);
  if (o.requires_grad) t.requires_grad_(true);
  return t;
}
}  // namespace

Tensor zeros(const Shape& s, const DeviceMesh& m, const Placements& p, Options o) {
  return make("zeros", {}, s, m, p, o);
}
Tensor ones(const Shape& s, const DeviceMesh& m, const Placements& p, Options o) {
  return make("ones", {}, s, m, p, o);
}
Tensor rand(const Shape& s, const DeviceMesh& m, const Placements& p, Options o) {
  return make("rand", {}, s, m, p, o);
}
Tensor randn(const Shape& s, const DeviceMesh& m, const Placements& p, Options o) {
  return make("randn", {}, s, m, p, o);
}
Tensor randint(int64_t low, int64_t high, const Shape& s, const DeviceMesh& m, const Placements& p,
               Options o) {
  return make("randint", {{"low", low}, {"high", high}}, s, m, p, o);
}

}  // namespace coil::dist
