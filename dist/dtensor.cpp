#include "dtensor.h"

#include "../autograd/node.h"
#include "../ops/creation.h"
#include "../ops/shape.h"

namespace coil::dist {

bool Placement::operator==(const Placement& o) const {
  if (kind != o.kind) return false;
  if (kind == Kind::kShard) return dim == o.dim;
  if (kind == Kind::kPartial) return op == o.op;
  return true;
}

std::string Placement::str() const {
  switch (kind) {
    case Kind::kShard:
      return "Shard(" + std::to_string(dim) + ")";
    case Kind::kPartial:
      return std::string("Partial(") + reduce_op_name(op) + ")";
    default:
      return "Replicate()";
  }
}

Placement Shard(int64_t dim) { return {Placement::Kind::kShard, dim, ReduceOp::kSum}; }
Placement Replicate() { return {}; }
Placement Partial(ReduceOp op) { return {Placement::Kind::kPartial, 0, op}; }

std::string str(const Placements& p) {
  std::string s = "[";
  for (size_t i = 0; i < p.size(); ++i) s += (i ? ", " : "") + p[i].str();
  return s + "]";
}

bool is_dtensor(const Tensor& t) {
  return t.defined() && dynamic_cast<const DTensorSpec*>(t.impl().dist.get()) != nullptr;
}

const DTensorSpec& dtensor_spec(const Tensor& t) {
  COIL_CHECK(is_dtensor(t), "dtensor_spec: the tensor of shape ",
             t.defined() ? t.shape_str() : "(undefined)", " is not a DTensor");
  return static_cast<const DTensorSpec&>(*t.impl().dist);
}

namespace {

using SpecPtr = std::shared_ptr<const DTensorSpec>;

// An alias of t's storage with no autograd history, as a plain tensor or with a spec.
Tensor alias(const Tensor& t, std::shared_ptr<DistSpecBase> spec) {
  Tensor a = t.detach();
  a.impl().hooks.clear();
  a.impl().dist = std::move(spec);
  return a;
}
Tensor plain(const Tensor& t) { return alias(t, nullptr); }
// The local piece of a DTensor as a fresh plain alias (no autograd history).
Tensor local_of(const Tensor& dt) { return plain(dtensor_spec(dt).local); }

// Placements checked against the mesh and the tensor, shard dims made non-negative.
Placements normalized(const char* op, const Placements& p, const DeviceMesh& mesh, int64_t ndim,
                      DType dtype) {
  COIL_CHECK(static_cast<int64_t>(p.size()) == mesh.ndim(), op, ": ", p.size(),
             " placements for a mesh of ", mesh.ndim(), " dims (", mesh.str(), ")");
  COIL_CHECK(mesh.contains_me(), op, ": rank ", world()->rank(), " is not in ", mesh.str());
  Placements out = p;
  for (Placement& q : out) {
    if (q.is_shard()) {
      COIL_CHECK(q.dim >= -ndim && q.dim < ndim, op, ": ", q.str(), " is out of range for a ", ndim,
                 "-d tensor");
      if (q.dim < 0) q.dim += ndim;
    }
    if (q.is_partial())
      COIL_CHECK(q.op != ReduceOp::kAvg || is_floating(dtype), op, ": ", q.str(),
                 " needs a floating dtype, got ", dtype);
  }
  return out;
}

// Extent along tensor dim d of the piece that mesh dim i splits: the global size cut by the
// earlier mesh dims that shard d, at this rank's coordinates.
int64_t piece_extent(const Shape& global, const DeviceMesh& mesh, const Placements& cur, int64_t i,
                     int64_t d) {
  int64_t ext = global[d];
  for (int64_t m = 0; m < i; ++m)
    if (cur[m].is_shard(d)) ext = shard_sizes(ext, mesh.size(m))[mesh.coordinate(m)];
  return ext;
}

int64_t offset_of(const std::vector<int64_t>& sizes, int64_t k) {
  int64_t o = 0;
  for (int64_t r = 0; r < k; ++r) o += sizes[r];
  return o;
}

Tensor rows_first(const Tensor& x, int64_t d) {
  return (d == 0 ? x : x.transpose(0, d)).contiguous();
}
Tensor rows_back(const Tensor& r, int64_t d) { return d == 0 ? r : r.transpose(0, d).contiguous(); }

// ---- one mesh dim, one transition (local tensors, no autograd) ----

// Shard(d) -> Replicate along mesh dim i: all_gather of the pieces.
Tensor gather_dim(const Tensor& L, const Shape& global, const DeviceMesh& mesh,
                  const Placements& cur, int64_t i, int64_t d) {
  const auto sizes = shard_sizes(piece_extent(global, mesh, cur, i, d), mesh.size(i));
  Tensor rows = rows_first(L, d);
  Shape s = rows.sizes();
  s[0] = offset_of(sizes, mesh.size(i));
  Tensor out = zeros(s, Options(L.dtype()));
  mesh.group(i)->all_gather(out, rows, sizes, blocking())->wait();
  return rows_back(out, d);
}

// Replicate -> Shard(d) along mesh dim i: this rank's chunk, no communication.
Tensor chunk_dim(const Tensor& L, const DeviceMesh& mesh, int64_t i, int64_t d) {
  const auto sizes = shard_sizes(L.size(d), mesh.size(i));
  const int64_t c = mesh.coordinate(i);
  return L.narrow(d, offset_of(sizes, c), sizes[c]).contiguous();
}

// Partial(op) -> Shard(d): reduce_scatter; Partial(op) -> Replicate: all_reduce.
Tensor reduce_scatter_dim(const Tensor& L, const DeviceMesh& mesh, int64_t i, int64_t d,
                          ReduceOp op) {
  const auto sizes = shard_sizes(L.size(d), mesh.size(i));
  Tensor rows = rows_first(L, d);
  Shape s = rows.sizes();
  s[0] = sizes[mesh.coordinate(i)];
  Tensor out = zeros(s, Options(L.dtype()));
  mesh.group(i)->reduce_scatter(out, rows, op, sizes, blocking())->wait();
  return rows_back(out, d);
}
Tensor all_reduce_dim(const Tensor& L, const DeviceMesh& mesh, int64_t i, ReduceOp op) {
  Tensor out = L.contiguous().clone();
  mesh.group(i)->all_reduce(out, op, blocking())->wait();
  return out;
}

// Replicate -> Partial(op): sum keeps the value on the first rank of the mesh dim (zeros
// elsewhere, so nothing is rounded); avg, max and min keep it everywhere.
Tensor partial_dim(const Tensor& L, const DeviceMesh& mesh, int64_t i, ReduceOp op) {
  if (op == ReduceOp::kSum && mesh.coordinate(i) != 0) return zeros_like(L);
  return L;
}

// Shard(a) -> Shard(b) along mesh dim i: all_to_all. Rank r sends its b-chunk r of the piece
// (it holds all of b) and receives every rank's a-piece of its own b-chunk.
Tensor all_to_all_dim(const Tensor& L, const Shape& global, const DeviceMesh& mesh,
                      const Placements& cur, int64_t i, int64_t a, int64_t b) {
  const int64_t k = mesh.size(i);
  const auto bsz = shard_sizes(L.size(b), k);
  const auto asz = shard_sizes(piece_extent(global, mesh, cur, i, a), k);
  const int64_t me = mesh.coordinate(i);
  int64_t inner = 1;  // elements of L per unit of a and of b
  for (int64_t e = 0; e < L.dim(); ++e)
    if (e != a && e != b) inner *= L.size(e);
  std::vector<Tensor> parts;
  std::vector<int64_t> send(k), recv(k);
  for (int64_t r = 0; r < k; ++r) {
    parts.push_back(L.narrow(b, offset_of(bsz, r), bsz[r]).contiguous().reshape({-1}));
    send[r] = L.size(a) * bsz[r] * inner;
    recv[r] = asz[r] * bsz[me] * inner;
  }
  Tensor in = cat(parts, 0);
  Tensor out = zeros({offset_of(recv, k)}, Options(L.dtype()));
  mesh.group(i)->all_to_all(out, in, send, recv, blocking())->wait();
  std::vector<Tensor> pieces;
  int64_t off = 0;
  for (int64_t r = 0; r < k; ++r) {
    Shape s = L.sizes();
    s[a] = asz[r];
    s[b] = bsz[me];
    pieces.push_back(out.narrow(0, off, recv[r]).reshape(s));
    off += recv[r];
  }
  return cat(pieces, a);
}

// The local piece under `dst`, from the local piece under `src`. Phase 1 walks the mesh dims
// from last to first and undoes every placement that changes (to Replicate, or straight to the
// target where one collective does it); phase 2 walks first to last and cuts the new shards.
// A tensor dim split by several mesh dims is nested (earlier mesh dim outside), so before a
// mesh dim changes how it splits dim d, the later mesh dims that split d are undone first.
Tensor redistribute_local(Tensor L, const Shape& global, const DeviceMesh& mesh,
                          const Placements& src, const Placements& dst) {
  NoGradGuard ng;
  Placements cur = src;
  const int64_t n = mesh.ndim();
  auto undo_later = [&](int64_t i, int64_t d) {
    for (int64_t j = n - 1; j > i; --j)
      if (cur[j].is_shard(d)) {
        L = gather_dim(L, global, mesh, cur, j, d);
        cur[j] = Replicate();
      }
  };
  for (int64_t i = n - 1; i >= 0; --i) {
    if (cur[i] == dst[i]) continue;
    if (cur[i].is_shard()) undo_later(i, cur[i].dim);
    if (dst[i].is_shard()) undo_later(i, dst[i].dim);
    if (cur[i].is_shard() && dst[i].is_shard() && mesh.size(i) > 1) {
      L = all_to_all_dim(L, global, mesh, cur, i, cur[i].dim, dst[i].dim);
      cur[i] = dst[i];
    } else if (cur[i].is_shard()) {
      L = gather_dim(L, global, mesh, cur, i, cur[i].dim);
      cur[i] = Replicate();
    } else if (cur[i].is_partial()) {
      if (dst[i].is_shard()) {
        L = reduce_scatter_dim(L, mesh, i, dst[i].dim, cur[i].op);
        cur[i] = dst[i];
      } else {
        L = all_reduce_dim(L, mesh, i, cur[i].op);
        cur[i] = Replicate();
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    if (cur[i] == dst[i]) continue;
    COIL_CHECK(cur[i].is_replicate(), "redistribute: internal plan error at mesh dim ", i);
    if (dst[i].is_shard())
      L = chunk_dim(L, mesh, i, dst[i].dim);
    else if (dst[i].is_partial())
      L = partial_dim(L, mesh, i, dst[i].op);
    cur[i] = dst[i];
  }
  return L;
}

// A DTensor over `local`: global sizes, the local piece's storage (kept alive, never read
// through the DTensor itself) and dtype.
Tensor make(const Tensor& local, const DeviceMesh& mesh, const Placements& p, const Shape& g) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = local.impl().storage;
  impl->sizes = g;
  impl->strides = contiguous_strides(g);
  impl->dtype = local.dtype();
  impl->dist = std::make_shared<DTensorSpec>(mesh, p, g, plain(local));
  return Tensor(impl);
}

// The gradient that reaches a DTensor op's backward, as a DTensor with spec s (a plain tensor
// is taken as the local piece).
// The gradient of a DTensor output (from_local, redistribute). A plain one is the engine's seed
// or zero fill, made from the DTensor's sizes: the global value, so each rank takes its piece of
// it (on a Partial(sum) dim the first rank holds it, so a scalar loss's seed counts once).
Tensor grad_as_dtensor(const Tensor& grad, const DTensorSpec& s) {
  if (is_dtensor(grad)) return grad;
  return distribute_tensor(grad, s.mesh, s.placements);
}

}  // namespace

LocalShard local_shard(const Shape& global, const DeviceMesh& mesh, const Placements& p_in) {
  const Placements p =
      normalized("local_shard", p_in, mesh, static_cast<int64_t>(global.size()), kF32);
  LocalShard s{global, Shape(global.size(), 0)};
  for (int64_t i = 0; i < mesh.ndim(); ++i)
    if (p[i].is_shard()) {
      const int64_t d = p[i].dim;
      const auto sizes = shard_sizes(s.sizes[d], mesh.size(i));
      const int64_t c = mesh.coordinate(i);
      s.offsets[d] += offset_of(sizes, c);
      s.sizes[d] = sizes[c];
    }
  return s;
}

Tensor distribute_tensor(const Tensor& global, const DeviceMesh& mesh, const Placements& p_in) {
  COIL_CHECK(!is_dtensor(global), "distribute_tensor: the input is already a DTensor");
  const Placements p = normalized("distribute_tensor", p_in, mesh, global.dim(), global.dtype());
  Tensor L = plain(global);
  {
    NoGradGuard ng;
    for (int64_t i = 0; i < mesh.ndim(); ++i) {
      if (p[i].is_shard()) L = chunk_dim(L, mesh, i, p[i].dim);
      if (p[i].is_partial()) L = partial_dim(L, mesh, i, p[i].op);
    }
    if (L.impl().storage == global.impl().storage) L = L.contiguous().clone();  // its own memory
  }
  Tensor out = make(L, mesh, p, global.sizes());
  if (global.requires_grad()) out.requires_grad_(true);
  return out;
}

Tensor from_local(const Tensor& local, const DeviceMesh& mesh, const Placements& p_in,
                  const std::optional<Shape>& global_shape) {
  COIL_CHECK(!is_dtensor(local), "from_local: the input is already a DTensor");
  const Placements p = normalized("from_local", p_in, mesh, local.dim(), local.dtype());
  Shape global = local.sizes();
  if (global_shape) {
    global = *global_shape;
    COIL_CHECK(static_cast<int64_t>(global.size()) == local.dim(), "from_local: global shape ",
               shape_str(global), " has another rank than the local ", local.shape_str());
  } else {
    NoGradGuard ng;
    for (int64_t i = mesh.ndim() - 1; i >= 0; --i)
      if (p[i].is_shard()) {
        Tensor n = full({1}, static_cast<double>(global[p[i].dim]), Options(kI64));
        mesh.group(i)->all_reduce(n, ReduceOp::kSum, blocking())->wait();
        global[p[i].dim] = n.data_ptr<int64_t>()[0];
      }
  }
  const LocalShard want = local_shard(global, mesh, p);
  COIL_CHECK(want.sizes == local.sizes(), "from_local: rank ", world()->rank(), "'s piece ",
             local.shape_str(), " is not its ", str(p), " piece ", shape_str(want.sizes),
             " of the global ", shape_str(global), " (shards follow torch.chunk's split)");
  Tensor out = make(local, mesh, p, global);
  if (needs_grad({&local}))
    record("dist.from_local", {local}, {out}, [spec = dtensor_spec(out)](const TensorList& g) {
      // the gradient's piece where the output's piece was (a Partial piece: all of it)
      Placements want = spec.placements;
      for (Placement& q : want)
        if (q.is_partial()) q = Replicate();
      Tensor d = grad_as_dtensor(g[0], spec);
      if (dtensor_spec(d).placements != want) d = redistribute(d, want);
      return TensorList{local_of(d)};
    });
  return out;
}

Tensor to_local(const Tensor& dt, const std::optional<Placements>& grad_placements) {
  const DTensorSpec& s = dtensor_spec(dt);
  Tensor out = local_of(dt);
  if (needs_grad({&dt})) {
    auto spec = std::make_shared<DTensorSpec>(s.mesh, grad_placements.value_or(s.placements),
                                              s.global_shape, s.local);
    COIL_CHECK(static_cast<int64_t>(spec->placements.size()) == s.mesh.ndim(),
               "to_local: ", spec->placements.size(), " grad placements for a mesh of ",
               s.mesh.ndim(), " dims");
    record("dist.to_local", {dt}, {out},
           [spec](const TensorList& g) -> TensorList {
             // the gradient of this rank's piece
             return {make(g[0], spec->mesh, spec->placements, spec->global_shape)};
           });
  }
  return out;
}

Tensor redistribute(const Tensor& dt, const Placements& p_in) {
  const DTensorSpec& s = dtensor_spec(dt);
  const Placements dst = normalized("redistribute", p_in, s.mesh,
                                    static_cast<int64_t>(s.global_shape.size()), dt.dtype());
  Tensor L = redistribute_local(local_of(dt), s.global_shape, s.mesh, s.placements, dst);
  Tensor out = make(L, s.mesh, dst, s.global_shape);
  if (needs_grad({&dt})) {
    auto src = std::make_shared<DTensorSpec>(s);
    auto to = std::make_shared<DTensorSpec>(s.mesh, dst, s.global_shape, L);
    record("dist.redistribute", {dt}, {out}, [src, to](const TensorList& g) -> TensorList {
      // the gradient of a Partial input is the whole gradient on every rank
      Placements back = src->placements;
      for (Placement& q : back)
        if (q.is_partial()) q = Replicate();
      return {redistribute(grad_as_dtensor(g[0], *to), back)};
    });
  }
  return out;
}

Tensor full_tensor(const Tensor& dt) {
  const DTensorSpec& s = dtensor_spec(dt);
  return to_local(redistribute(dt, Placements(s.mesh.ndim(), Replicate())));
}

}  // namespace coil::dist
