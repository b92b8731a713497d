#include "json.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <unordered_set>

#include "../../core/error.h"
#include "file.h"

namespace coil::json {

namespace {
const char* type_str(Value::Type t) {
  switch (t) {
    case Value::Type::null:
      return "null";
    case Value::Type::boolean:
      return "bool";
    case Value::Type::integer:
      return "integer";
    case Value::Type::number:
      return "number";
    case Value::Type::string:
      return "string";
    case Value::Type::array:
      return "array";
    case Value::Type::object:
      return "object";
  }
  return "?";
}
}  // namespace

Value Value::object() {
  Value v;
  v.type_ = Type::object;
  return v;
}

void Value::set_unsigned(unsigned long long v) {
  if (v <= static_cast<unsigned long long>(std::numeric_limits<int64_t>::max())) {
    type_ = Type::integer;
    i_ = static_cast<int64_t>(v);
  } else {
    type_ = Type::number;
    d_ = static_cast<double>(v);
  }
}

const char* Value::type_name() const { return type_str(type_); }

bool Value::as_bool() const {
  COIL_CHECK(is_bool(), "json: expected a bool, got ", type_name());
  return b_;
}
int64_t Value::as_int() const {
  COIL_CHECK(is_int(), "json: expected an integer, got ", type_name(),
             is_double() ? " (a number with a fraction or exponent)" : "");
  return i_;
}
int64_t Value::as_int_in(std::string_view key, int64_t lo, int64_t hi) const {
  COIL_CHECK(is_int(), "json: '", key, "': expected an integer, got ", type_name());
  COIL_CHECK(i_ >= lo && i_ <= hi, "json: '", key, "': ", i_, " is out of range [", lo, ", ", hi,
             "]");
  return i_;
}
double Value::as_double() const {
  COIL_CHECK(is_number(), "json: expected a number, got ", type_name());
  return is_int() ? static_cast<double>(i_) : d_;
}
const std::string& Value::as_string() const {
  COIL_CHECK(is_string(), "json: expected a string, got ", type_name());
  return s_;
}
const std::vector<Value>& Value::items() const {
  COIL_CHECK(is_array(), "json: expected an array, got ", type_name());
  return arr_;
}
std::vector<Value>& Value::items() {
  COIL_CHECK(is_array(), "json: expected an array, got ", type_name());
  return arr_;
}
const std::vector<Value::Member>& Value::members() const {
  COIL_CHECK(is_object(), "json: expected an object, got ", type_name());
  return obj_;
}
std::vector<Value::Member>& Value::members() {
  COIL_CHECK(is_object(), "json: expected an object, got ", type_name());
  return obj_;
}

size_t Value::size() const {
  if (is_array()) return arr_.size();
  COIL_CHECK(is_object(), "json: size() of a ", type_name(), " (expected an array or object)");
  return obj_.size();
}

const Value& Value::operator[](size_t i) const {
  const auto& a = items();
  COIL_CHECK(i < a.size(), "json: index ", i, " out of range for an array of ", a.size());
  return a[i];
}

const Value* Value::find(std::string_view key) const {
  for (const auto& [k, v] : members())
    if (k == key) return &v;
  return nullptr;
}

const Value& Value::operator[](std::string_view key) const {
  const Value* v = find(key);
  COIL_CHECK(v, "json: missing key '", key, "'");
  return *v;
}

std::string Value::get(std::string_view key, const char* dflt) const {
  return get<std::string>(key, std::string(dflt));
}

Value& Value::set(std::string key, Value v) {
  auto& m = members();
  for (auto& [k, old] : m)
    if (k == key) {
      old = std::move(v);
      return old;
    }
  m.emplace_back(std::move(key), std::move(v));
  return m.back().second;
}

Value& Value::push_back(Value v) {
  auto& a = items();
  a.push_back(std::move(v));
  return a.back();
}

bool operator==(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.is_int() && b.is_int()) return a.i_ == b.i_;
    return a.as_double() == b.as_double();
  }
  if (a.type_ != b.type_) return false;
  switch (a.type_) {
    case Value::Type::null:
      return true;
    case Value::Type::boolean:
      return a.b_ == b.b_;
    case Value::Type::string:
      return a.s_ == b.s_;
    case Value::Type::array:
      return a.arr_ == b.arr_;
    case Value::Type::object:
      return a.obj_ == b.obj_;
    default:
      return false;
  }
}

// ---------------------------------------------------------------- dump

namespace {
void dump_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void dump_double(std::string& out, double d) {
  if (std::isnan(d)) {
    out += "NaN";
    return;
  }
  if (std::isinf(d)) {
    out += d > 0 ? "Infinity" : "-Infinity";
    return;
  }
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d);  // shortest text that reads back exactly
  std::string_view s(buf, static_cast<size_t>(r.ptr - buf));
  out += s;
  if (s.find_first_of(".eE") == std::string_view::npos) out += ".0";
}

void newline(std::string& out, int indent, int depth) {
  out += '\n';
  out.append(static_cast<size_t>(indent) * static_cast<size_t>(depth), ' ');
}
}  // namespace

static void dump_value(std::string& out, const Value& v, int indent, int depth) {
  switch (v.type()) {
    case Value::Type::null:
      out += "null";
      return;
    case Value::Type::boolean:
      out += v.as_bool() ? "true" : "false";
      return;
    case Value::Type::integer:
      out += std::to_string(v.as_int());
      return;
    case Value::Type::number:
      dump_double(out, v.as_double());
      return;
    case Value::Type::string:
      dump_string(out, v.as_string());
      return;
    case Value::Type::array: {
      const auto& a = v.items();
      if (a.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < a.size(); ++i) {
        if (i) out += ',';
        if (indent >= 0) newline(out, indent, depth + 1);
        dump_value(out, a[i], indent, depth + 1);
      }
      if (indent >= 0) newline(out, indent, depth);
      out += ']';
      return;
    }
    case Value::Type::object: {
      const auto& m = v.members();
      if (m.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t i = 0; i < m.size(); ++i) {
        if (i) out += ',';
        if (indent >= 0) newline(out, indent, depth + 1);
        dump_string(out, m[i].first);
        out += indent >= 0 ? ": " : ":";
        dump_value(out, m[i].second, indent, depth + 1);
      }
      if (indent >= 0) newline(out, indent, depth);
      out += '}';
      return;
    }
  }
}

std::string Value::dump(int indent) const {
  std::string out;
  dump_value(out, *this, indent, 0);
  return out;
}

// ---------------------------------------------------------------- parse

namespace {

class Parser {
 public:
  Parser(std::string_view text, const std::string& what) : t_(text), what_(what) {}

  Value document() {
    skip_ws();
    Value v = value(0);
    skip_ws();
    if (p_ != t_.size()) error("unexpected '", printable(t_[p_]), "' after the document");
    return v;
  }

 private:
  std::string_view t_;
  const std::string& what_;
  size_t p_ = 0;

  static std::string printable(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return std::string(1, c);
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\x%02x", u);
    return buf;
  }

  template <class... A>
  [[noreturn]] void error(const A&... msg) const {
    error_at(p_, msg...);
  }
  template <class... A>
  [[noreturn]] void error_at(size_t at, const A&... msg) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < t_.size(); ++i) {
      if (t_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    fail("json: ", what_, ": ", msg..., " at line ", line, ", column ", col, " (byte ", at, ")");
  }

  bool at_end() const { return p_ >= t_.size(); }
  char peek() const { return at_end() ? '\0' : t_[p_]; }

  void skip_ws() {
    while (!at_end()) {
      char c = t_[p_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++p_;
    }
  }

  void expect_word(std::string_view w) {
    if (t_.substr(p_, w.size()) != w) error("invalid literal (expected '", w, "')");
    p_ += w.size();
  }

  Value value(int depth) {
    if (at_end()) error("unexpected end of input (expected a value)");
    char c = t_[p_];
    switch (c) {
      case '{':
        return object(depth + 1);
      case '[':
        return array(depth + 1);
      case '"':
        return Value(string());
      case 't':
        expect_word("true");
        return Value(true);
      case 'f':
        expect_word("false");
        return Value(false);
      case 'n':
        expect_word("null");
        return Value();
      case 'N':
        expect_word("NaN");
        return Value(std::nan(""));
      case 'I':
        expect_word("Infinity");
        return Value(HUGE_VAL);
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        error("unexpected '", printable(c), "' (expected a value)");
    }
  }

  void check_depth(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than ", kMaxDepth, " levels");
  }

  Value array(int depth) {
    check_depth(depth);
    ++p_;  // [
    Value v = Value::array();
    auto& items = v.items();
    skip_ws();
    if (peek() == ']') {
      ++p_;
      return v;
    }
    while (true) {
      skip_ws();
      items.push_back(value(depth));
      skip_ws();
      if (at_end()) error("unexpected end of input in an array (expected ',' or ']')");
      char c = t_[p_++];
      if (c == ']') return v;
      if (c != ',') error_at(p_ - 1, "unexpected '", printable(c), "' in an array");
    }
  }

  Value object(int depth) {
    check_depth(depth);
    ++p_;  // {
    Value v = Value::object();
    auto& members = v.members();
    std::unordered_set<std::string> seen;  // only for large objects: small ones scan
    skip_ws();
    if (peek() == '}') {
      ++p_;
      return v;
    }
    while (true) {
      skip_ws();
      if (peek() != '"') {
        if (at_end()) error("unexpected end of input in an object (expected a key)");
        error("unexpected '", printable(peek()), "' in an object (expected a string key)");
      }
      size_t key_at = p_;
      std::string key = string();
      bool dup = false;
      if (members.size() < 16) {
        for (const auto& m : members) dup = dup || m.first == key;
      } else {
        if (seen.empty())
          for (const auto& m : members) seen.insert(m.first);
        dup = !seen.insert(key).second;
      }
      if (dup) error_at(key_at, "duplicate key '", key, "'");
      skip_ws();
      if (peek() != ':') {
        if (at_end()) error("unexpected end of input (expected ':')");
        error("unexpected '", printable(peek()), "' after key '", key, "' (expected ':')");
      }
      ++p_;
      skip_ws();
      members.emplace_back(std::move(key), value(depth));
      skip_ws();
      if (at_end()) error("unexpected end of input in an object (expected ',' or '}')");
      char c = t_[p_++];
      if (c == '}') return v;
      if (c != ',') error_at(p_ - 1, "unexpected '", printable(c), "' in an object");
    }
  }

  unsigned hex4() {
    if (p_ + 4 > t_.size()) error("unexpected end of input in a \\u escape");
    unsigned u = 0;
    for (int i = 0; i < 4; ++i) {
      char c = t_[p_ + i];
      unsigned d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        error_at(p_ + i, "invalid hex digit '", printable(c), "' in a \\u escape");
      }
      u = u * 16 + d;
    }
    p_ += 4;
    return u;
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  // Length of the valid UTF-8 sequence starting at p_ (a byte >= 0x80), or 0.
  size_t utf8_len() const {
    auto b = [&](size_t i) { return static_cast<unsigned char>(t_[p_ + i]); };
    unsigned char c = b(0);
    size_t n;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
      n = 2;
      cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (p_ + n > t_.size()) return 0;
    for (size_t i = 1; i < n; ++i) {
      if ((b(i) & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (b(i) & 0x3f);
    }
    // overlong forms, surrogates and code points past U+10FFFF
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
    if (cp >= 0xd800 && cp <= 0xdfff) return 0;
    return n;
  }

  std::string string() {
    ++p_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) error("unterminated string");
      unsigned char c = static_cast<unsigned char>(t_[p_]);
      if (c == '"') {
        ++p_;
        return out;
      }
      if (c < 0x20) error("control character \\x", printable(c).substr(2), " in a string");
      if (c >= 0x80) {
        size_t n = utf8_len();
        if (!n) error("invalid UTF-8 in a string");
        out.append(t_.substr(p_, n));
        p_ += n;
        continue;
      }
      if (c != '\\') {
        out += static_cast<char>(c);
        ++p_;
        continue;
      }
      size_t esc_at = p_;
      ++p_;
      if (at_end()) error("unterminated string");
      char e = t_[p_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) error_at(esc_at, "lone low surrogate in a \\u escape");
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (t_.substr(p_, 2) != "\\u") error_at(esc_at, "high surrogate without a low one");
            p_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xdc00 || lo > 0xdfff) error_at(esc_at, "high surrogate without a low one");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          }
          put_utf8(out, cp);
          break;
        }
        default:
          error_at(esc_at, "invalid escape '\\", printable(e), "'");
      }
    }
  }

  Value number() {
    size_t start = p_;
    if (peek() == '-') {
      ++p_;
      if (peek() == 'I') {
        expect_word("Infinity");
        return Value(-HUGE_VAL);
      }
    }
    auto digits = [&] {
      size_t s = p_;
      while (!at_end() && t_[p_] >= '0' && t_[p_] <= '9') ++p_;
      return p_ - s;
    };
    if (peek() == '0') {
      ++p_;
      if (peek() >= '0' && peek() <= '9') error_at(start, "leading zero in a number");
    } else if (!digits()) {
      error_at(start, "invalid number");
    }
    bool integral = true;
    if (peek() == '.') {
      ++p_;
      integral = false;
      if (!digits()) error_at(start, "invalid number (no digits after '.')");
    }
    if (peek() == 'e' || peek() == 'E') {
      ++p_;
      integral = false;
      if (peek() == '+' || peek() == '-') ++p_;
      if (!digits()) error_at(start, "invalid number (no digits in the exponent)");
    }
    const char* b = t_.data() + start;
    const char* e = t_.data() + p_;
    if (integral) {
      int64_t i;
      auto r = std::from_chars(b, e, i);
      if (r.ec == std::errc() && r.ptr == e) return Value(static_cast<long long>(i));
    }
    double d;
    auto r = std::from_chars(b, e, d);
    if (r.ec == std::errc::result_out_of_range) {
      d = std::strtod(std::string(b, e).c_str(), nullptr);  // +-inf or +-0, as Python gives
    } else if (r.ec != std::errc() || r.ptr != e) {
      error_at(start, "invalid number");
    }
    return Value(d);
  }
};

}  // namespace

Value parse(std::string_view text, const std::string& what) {
  return Parser(text, what).document();
}

Value parse_file(const std::string& path) { return parse(io::read_file(path), path); }

double python_float(const Value& v, const std::string& where) {
  if (v.is_object()) {
    const Value* f = v.find("__float__");
    COIL_CHECK(f && f->is_string(), where, " holds an object other than {\"__float__\": ...}");
    const std::string& s = f->as_string();
    if (s == "Infinity" || s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-Infinity" || s == "-inf") return -std::numeric_limits<double>::infinity();
    if (s == "NaN" || s == "nan") return std::numeric_limits<double>::quiet_NaN();
    fail(where, " has an unknown __float__ \"", s, "\"");
  }
  COIL_CHECK(v.is_number(), where, " must be a number, got ", v.type_name());
  return v.as_double();
}

void python_float_pair(const Value& obj, std::string_view key, const std::string& where, double& lo,
                       double& hi) {
  const Value* v = obj.find(key);
  if (!v || v->is_null()) return;
  COIL_CHECK(v->is_array() && v->size() == 2, where, " needs 2 numbers, got ",
             v->is_array() ? std::to_string(v->size()) + " values" : std::string(v->type_name()));
  lo = python_float((*v)[0], where);
  hi = python_float((*v)[1], where);
}

}  // namespace coil::json
