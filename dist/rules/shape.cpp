// Joining and splitting (cat, stack, split, chunk), scans along a dim (cumsum, cumprod) and
// sorting along a dim (sort, argsort, topk): every dim but the op's own may stay sharded.
#include "../sharding.h"

namespace coil::dist {
namespace {

std::vector<Shape> pieces(const Shape& in, int64_t dim, const Shape& sizes) {
  std::vector<Shape> out;
  for (int64_t s : sizes) {
    Shape p = in;
    p[dim] = s;
    out.push_back(p);
  }
  return out;
}

Shape split_sizes(const OpMeta& m, int64_t dim) {
  const int64_t n = m.shapes[0][dim];
  for (const Attr& a : *m.attrs)
    if (a.name == "split_sizes") return std::get<Shape>(a.value);
  if (m.attrs->size() && m.attr_or<int64_t>("chunks", 0) > 0) {
    const int64_t chunks = m.attr<int64_t>("chunks");
    if (n == 0) return Shape(chunks, 0);
    const int64_t c = (n + chunks - 1) / chunks;
    Shape s;
    for (int64_t off = 0; off < n; off += c) s.push_back(std::min(c, n - off));
    return s;
  }
  const int64_t c = m.attr<int64_t>("split_size");
  if (n == 0) return Shape{0};
  Shape s;
  for (int64_t off = 0; off < n; off += c) s.push_back(std::min(c, n - off));
  return s;
}

struct Register {
  Register() {
    ShardingRule cat;
    cat.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(), 1); };
    cat.output_shapes = [](const OpMeta& m) {
      Shape out = m.shapes[0];
      const int64_t d = m.dim_attr();
      out[d] = 0;
      for (const Shape& s : m.shapes) out[d] += s[d];
      return std::vector<Shape>{out};
    };
    register_sharding_rule("cat", cat);

    ShardingRule st;
    st.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(1), 1, 1); };
    st.output_shapes = [](const OpMeta& m) {
      Shape out = m.shapes[0];
      out.insert(out.begin() + m.dim_attr(1), static_cast<int64_t>(m.shapes.size()));
      return std::vector<Shape>{out};
    };
    register_sharding_rule("stack", st);

    for (const char* op : {"split", "chunk"}) {
      ShardingRule sp;
      sp.strategies = [](const OpMeta& m) {
        const int64_t d = m.dim_attr();
        return shard_other_dims(m, d, split_sizes(m, d).size());
      };
      sp.output_shapes = [](const OpMeta& m) {
        const int64_t d = m.dim_attr();
        return pieces(m.shapes[0], d, split_sizes(m, d));
      };
      register_sharding_rule(op, sp);
    }

    for (const char* op : {"cumsum", "cumprod", "argsort"}) {
      ShardingRule c;
      c.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(), 1); };
      c.output_shapes = [](const OpMeta& m) { return std::vector<Shape>{m.shapes[0]}; };
      register_sharding_rule(op, c);
    }
    ShardingRule so;
    so.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(), 2); };
    so.output_shapes = [](const OpMeta& m) { return std::vector<Shape>(2, m.shapes[0]); };
    register_sharding_rule("sort", so);
    ShardingRule tk;
    tk.strategies = [](const OpMeta& m) { return shard_other_dims(m, m.dim_attr(), 2); };
    tk.output_shapes = [](const OpMeta& m) {
      Shape out = m.shapes[0];
      out[m.dim_attr()] = m.attr<int64_t>("k");
      return std::vector<Shape>(2, out);
    };
    register_sharding_rule("topk", tk);
  }
} reg;

}  // namespace
}  // namespace coil::dist
