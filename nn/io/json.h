// coil::json: a small JSON value for config.json, safetensors headers and checkpoint indexes.
// Objects keep insertion order (so dump is deterministic and follows the file), integers stay
// exact int64, other numbers are doubles. parse() rejects duplicate object keys and nesting
// deeper than kMaxDepth, and its errors name the source and the line/column/byte offset.
// Lookups in an object are linear: for a large map (a tokenizer vocabulary) iterate items() once.
#pragma once
#include <cstdint>
#include <string>
#include <limits>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace coil::json {

inline constexpr int kMaxDepth = 256;

class Value {
 public:
  enum class Type : uint8_t { null, boolean, integer, number, string, array, object };
  using Member = std::pair<std::string, Value>;

  Value() = default;                                                               // null
  Value(std::nullptr_t) {}                                                         // NOLINT
  Value(bool b) : type_(Type::boolean), b_(b) {}                                   // NOLINT
  Value(int v) : type_(Type::integer), i_(v) {}                                    // NOLINT
  Value(long v) : type_(Type::integer), i_(v) {}                                   // NOLINT
  Value(long long v) : type_(Type::integer), i_(v) {}                              // NOLINT
  Value(unsigned v) : type_(Type::integer), i_(v) {}                               // NOLINT
  Value(unsigned long v) { set_unsigned(v); }                                      // NOLINT
  Value(unsigned long long v) { set_unsigned(v); }                                 // NOLINT
  Value(double v) : type_(Type::number), d_(v) {}                                  // NOLINT
  Value(std::string s) : type_(Type::string), s_(std::move(s)) {}                  // NOLINT
  Value(std::string_view s) : type_(Type::string), s_(s) {}                        // NOLINT
  Value(const char* s) : type_(Type::string), s_(s) {}                             // NOLINT
  Value(std::vector<Value> items) : type_(Type::array), arr_(std::move(items)) {}  // NOLINT
  static Value array() { return Value(std::vector<Value>{}); }
  static Value object();

  Type type() const { return type_; }
  const char* type_name() const;
  bool is_null() const { return type_ == Type::null; }
  bool is_bool() const { return type_ == Type::boolean; }
  bool is_int() const { return type_ == Type::integer; }
  bool is_number() const { return type_ == Type::integer || type_ == Type::number; }
  bool is_double() const { return type_ == Type::number; }
  bool is_string() const { return type_ == Type::string; }
  bool is_array() const { return type_ == Type::array; }
  bool is_object() const { return type_ == Type::object; }

  // Each throws coil::Error naming the expected and actual type.
  bool as_bool() const;
  int64_t as_int() const;    // integers only
  double as_double() const;  // integers or numbers
  const std::string& as_string() const;
  const std::vector<Value>& items() const;  // array elements
  std::vector<Value>& items();
  const std::vector<Member>& members() const;  // object members in insertion order
  std::vector<Member>& members();

  size_t size() const;                      // elements of an array or members of an object
  const Value& operator[](size_t i) const;  // array; out of range throws
  const Value& operator[](std::string_view key) const;  // object; missing key throws
  const Value* find(std::string_view key) const;        // object; nullptr if missing
  bool contains(std::string_view key) const { return find(key) != nullptr; }
  // The member converted to T, or dflt when it is missing or null: get("d_model", 768).
  template <class T>
  T get(std::string_view key, const T& dflt) const;
  std::string get(std::string_view key, const char* dflt) const;

  // Building: set replaces an existing key in place, otherwise appends.
  Value& set(std::string key, Value v);
  Value& push_back(Value v);

  // Negative indent: compact, no spaces (as a safetensors header). indent >= 0: one member per
  // line, as Python's json.dumps(indent=...). Doubles print as the shortest text that reads
  // back to the same double, always with a '.' or exponent so they stay doubles; NaN and
  // infinities print as Python does (NaN, Infinity), which parse() accepts too.
  std::string dump(int indent = -1) const;

  friend bool operator==(const Value& a, const Value& b);

 private:
  void set_unsigned(unsigned long long v);
  int64_t as_int_in(std::string_view key, int64_t lo, int64_t hi) const;
  Type type_ = Type::null;
  bool b_ = false;
  int64_t i_ = 0;
  double d_ = 0;
  std::string s_;
  std::vector<Value> arr_;
  std::vector<Member> obj_;
};

// Parses one JSON document (RFC 8259, plus NaN/Infinity/-Infinity as Python writes them).
// Errors throw coil::Error: "json: <what>: <problem> at line L, column C (byte B)".
Value parse(std::string_view text, const std::string& what = "input");
// Reads and parses a file; errors name the path.
Value parse_file(const std::string& path);

// A float of a transformers config.json: a number, or the object transformers 5 writes for the
// values JSON lacks, {"__float__": "Infinity"} (also "-Infinity", "NaN"). Errors start with
// `where` ("MambaConfig: path: time_step_limit").
double python_float(const Value& v, const std::string& where);
// obj[key] as a [lo, hi] pair of such floats; lo and hi are kept when the key is missing or null.
void python_float_pair(const Value& obj, std::string_view key, const std::string& where, double& lo,
                       double& hi);

template <class T>
T Value::get(std::string_view key, const T& dflt) const {
  const Value* v = find(key);
  if (!v || v->is_null()) return dflt;
  if constexpr (std::is_same_v<T, bool>) {
    return v->as_bool();
  } else if constexpr (std::is_integral_v<T>) {
    constexpr int64_t lo = std::is_signed_v<T> ? int64_t(std::numeric_limits<T>::min()) : 0;
    constexpr int64_t hi = sizeof(T) >= 8 ? std::numeric_limits<int64_t>::max()
                                          : int64_t(std::numeric_limits<T>::max());
    return static_cast<T>(v->as_int_in(key, lo, hi));
  } else if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(v->as_double());
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v->as_string();
  } else {
    static_assert(std::is_same_v<T, Value>, "Value::get: unsupported type");
    return *v;
  }
}

}  // namespace coil::json
