#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "test_util.h"

using namespace coil;
namespace fs = std::filesystem;
using json::Value;

namespace {

using ct::TempDir;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// A safetensors file from a header text (padded with spaces to a multiple of 8) and data bytes.
std::string st_bytes(std::string header, const std::string& data, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

// Raw bytes of a contiguous copy.
std::string raw(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.raw_data()), c.nbytes());
}

std::vector<std::string> tmp_leftovers(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    if (n.find(".tmp.") != std::string::npos) out.push_back(n);
  }
  return out;
}

}  // namespace

TEST_SUITE("nn.io") {
  // ------------------------------------------------------------------ json

  TEST_CASE("json: parse keeps int64 exact, doubles, strings, order") {
    Value v = json::parse(R"({
      "big": 9007199254740993, "max": 9223372036854775807, "min": -9223372036854775808,
      "over": 9223372036854775808, "neg0": -0, "pi": 3.14159, "exp": -1.5E+3, "tiny": 5e-324,
      "t": true, "f": false, "n": null, "s": "a\"b\\c\/d\n\t\u00e9\ud83d\ude00",
      "arr": [1, [2, {}], []], "z": 1, "a": 2 })",
                          "test");
    CHECK(v.is_object());
    CHECK(v["big"].is_int());
    CHECK(v["big"].as_int() == 9007199254740993LL);
    CHECK(v["max"].as_int() == std::numeric_limits<int64_t>::max());
    CHECK(v["min"].as_int() == std::numeric_limits<int64_t>::min());
    CHECK(v["over"].is_double());
    CHECK(v["over"].as_double() == 9223372036854775808.0);
    CHECK(v["neg0"].as_int() == 0);
    CHECK(v["pi"].as_double() == 3.14159);
    CHECK(v["exp"].as_double() == -1500.0);
    CHECK(v["tiny"].as_double() == 5e-324);
    CHECK(v["big"].as_double() == 9007199254740992.0);  // as_double accepts ints
    CHECK(v["t"].as_bool());
    CHECK(!v["f"].as_bool());
    CHECK(v["n"].is_null());
    CHECK(v["s"].as_string() == "a\"b\\c/d\n\t\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(v["arr"].size() == 3);
    CHECK(v["arr"][1][0].as_int() == 2);
    CHECK(v["arr"][1][1].is_object());
    CHECK(v["arr"][2].items().empty());
    std::vector<std::string> keys;
    for (const auto& [k, x] : v.members()) keys.push_back(k);
    CHECK(keys == std::vector<std::string>{"big", "max", "min", "over", "neg0", "pi", "exp", "tiny",
                                           "t", "f", "n", "s", "arr", "z", "a"});
    CHECK(v.contains("pi"));
    CHECK(!v.contains("nope"));
    CHECK(v.find("nope") == nullptr);
    CHECK(v.get("pi", 0.0) == 3.14159);
    CHECK(v.get("nope", 7) == 7);
    CHECK(v.get("z", 7) == 1);
    CHECK(v.get("n", 2.5) == 2.5);  // null counts as missing
    CHECK(v.get("s", "x").size() == 15);
    CHECK(v.get("nope", "dflt") == "dflt");
    CHECK(v.get("t", false));
    CHECK(json::parse(" [ ] ", "x").size() == 0);
    CHECK(json::parse("NaN", "x").as_double() != json::parse("NaN", "x").as_double());
    CHECK(json::parse("-Infinity", "x").as_double() == -HUGE_VAL);
    CHECK(json::parse("1e400", "x").as_double() == HUGE_VAL);
  }

  TEST_CASE("json: accessor errors name the types") {
    Value v = json::parse(R"({"a": "str", "b": 1.5, "c": 300})", "x");
    ct::check_error([&] { v["a"].as_int(); }, {"integer", "string"});
    ct::check_error([&] { v["b"].as_int(); }, {"integer", "number"});
    ct::check_error([&] { v["a"].as_double(); }, {"number", "string"});
    ct::check_error([&] { v["b"].as_string(); }, {"string", "number"});
    ct::check_error([&] { v["a"].as_bool(); }, {"bool"});
    ct::check_error([&] { v["missing"]; }, {"missing key 'missing'"});
    ct::check_error([&] { v["a"].items(); }, {"array"});
    ct::check_error([&] { v.items(); }, {"array", "object"});
    ct::check_error([&] { json::parse("[1]", "x")[1]; }, {"index 1", "1"});
    ct::check_error([&] { v.get("c", int8_t(0)); }, {"'c'", "300", "out of range"});
    CHECK(v.get("c", int16_t(0)) == 300);
  }

  TEST_CASE("json: build and dump, compact and pretty, deterministic") {
    Value o = Value::object();
    o.set("name", "mamba");
    o.set("d_model", 768);
    o.set("eps", 1e-5);
    o.set("one", 1.0);
    o.set("flag", true);
    o.set("none", nullptr);
    Value arr = Value::array();
    arr.push_back(1);
    arr.push_back(2.5);
    arr.push_back("x\ny\x01");
    o.set("arr", arr);
    o.set("empty_a", Value::array());
    o.set("empty_o", Value::object());
    o.set("d_model", int64_t(1024));  // replaces in place
    CHECK(o.size() == 9);
    CHECK(o["d_model"].as_int() == 1024);
    CHECK(o.dump() ==
          R"({"name":"mamba","d_model":1024,"eps":1e-05,"one":1.0,"flag":true,"none":null,)"
          R"("arr":[1,2.5,"x\ny\u0001"],"empty_a":[],"empty_o":{}})");
    CHECK(o.dump(2) == R"({
  "name": "mamba",
  "d_model": 1024,
  "eps": 1e-05,
  "one": 1.0,
  "flag": true,
  "none": null,
  "arr": [
    1,
    2.5,
    "x\ny\u0001"
  ],
  "empty_a": [],
  "empty_o": {}
})");
    CHECK(json::parse(o.dump(2), "x") == o);
    CHECK(json::parse(o.dump(), "x") == o);
    CHECK(json::parse(o.dump(), "x").dump() == o.dump());
    // non-ASCII passes through as UTF-8 and reads back
    Value u = Value(std::string("\xc3\xa9\xf0\x9f\x98\x80"));
    CHECK(u.dump() == "\"\xc3\xa9\xf0\x9f\x98\x80\"");
    CHECK(json::parse(u.dump(), "x") == u);
    // doubles: shortest text that reads back to the same bits, always a double
    CHECK(Value(0.1).dump() == "0.1");
    CHECK(Value(1.0 / 3).dump() == "0.3333333333333333");
    CHECK(Value(1e20).dump() == "1e+20");
    CHECK(Value(-2.0).dump() == "-2.0");
    CHECK(Value(5e-324).dump() == "5e-324");
    CHECK(Value(std::numeric_limits<double>::infinity()).dump() == "Infinity");
    CHECK(Value(std::nan("")).dump() == "NaN");
    CHECK(Value(uint64_t(1) << 63).is_double());
    manual_seed(3);
    std::vector<double> xs = to_vector<double>(randn({200}, kF64) * 1e5);
    xs.push_back(std::numeric_limits<double>::max());
    xs.push_back(std::numeric_limits<double>::denorm_min());
    xs.push_back(-0.0);
    for (double x : xs) {
      Value back = json::parse(Value(x).dump(), "x");
      CHECK(back.is_double());
      double y = back.as_double();
      CHECK(std::memcmp(&x, &y, sizeof x) == 0);
    }
  }

  TEST_CASE("json: malformed input throws with what, line and byte") {
    ct::check_error([] { json::parse("{\n  \"a\": 1,\n}", "config.json"); },
                    {"json: config.json", "line 3", "column 1", "byte 12"});
    ct::check_error([] { json::parse("[1, 2", "w"); }, {"w", "end of input"});
    ct::check_error([] { json::parse("[1 2]", "w"); }, {"unexpected '2'", "byte 3"});
    ct::check_error([] { json::parse("{\"a\" 1}", "w"); }, {"expected ':'"});
    ct::check_error([] { json::parse("{1: 2}", "w"); }, {"string key"});
    ct::check_error([] { json::parse("\"abc", "w"); }, {"unterminated string"});
    ct::check_error([] { json::parse("\"a\nb\"", "w"); }, {"control character"});
    ct::check_error([] { json::parse("\"\\q\"", "w"); }, {"invalid escape"});
    ct::check_error([] { json::parse("\"\\u12G4\"", "w"); }, {"hex digit"});
    ct::check_error([] { json::parse("\"\\ud83d\"", "w"); }, {"high surrogate"});
    ct::check_error([] { json::parse("\"\\ud83d\\u0041\"", "w"); }, {"high surrogate"});
    ct::check_error([] { json::parse("\"\\ude00\"", "w"); }, {"lone low surrogate"});
    ct::check_error([] { json::parse("\"\xff\"", "w"); }, {"invalid UTF-8"});
    ct::check_error([] { json::parse("\"\xc0\xaf\"", "w"); }, {"invalid UTF-8"});  // overlong '/'
    ct::check_error([] { json::parse("01", "w"); }, {"leading zero"});
    ct::check_error([] { json::parse("1.", "w"); }, {"invalid number"});
    ct::check_error([] { json::parse("-", "w"); }, {"invalid number"});
    ct::check_error([] { json::parse("1e", "w"); }, {"exponent"});
    ct::check_error([] { json::parse("tru", "w"); }, {"invalid literal"});
    ct::check_error([] { json::parse("", "w"); }, {"end of input"});
    ct::check_error([] { json::parse("{} x", "w"); }, {"after the document"});
    ct::check_error([] { json::parse(R"({"a": 1, "b": 2, "a": 3})", "w"); },
                    {"duplicate key 'a'", "byte 17"});
    // a large object uses a hash set for duplicates: still caught
    std::string big = "{";
    for (int i = 0; i < 100; ++i)
      big += "\"k" + std::to_string(i) + "\": " + std::to_string(i) + ",";
    CHECK(json::parse(big + "\"end\": 0}", "w").size() == 101);
    ct::check_error([&] { json::parse(big + "\"k42\": 0}", "w"); }, {"duplicate key 'k42'"});
    // nesting: kMaxDepth levels parse, one more is refused instead of overflowing the stack
    auto nested = [](int n) { return std::string(n, '[') + std::string(n, ']'); };
    CHECK(json::parse(nested(json::kMaxDepth), "w").is_array());
    ct::check_error([&] { json::parse(nested(json::kMaxDepth + 1), "w"); }, {"nesting deeper"});
    ct::check_error([&] { json::parse(std::string(1000000, '['), "w"); }, {"nesting deeper"});
    ct::check_error([] { json::parse_file("/nonexistent/coil/config.json"); },
                    {"/nonexistent/coil/config.json"});
  }

  // ------------------------------------------------------------------ safetensors

  TEST_CASE("safetensors: a hand-written file loads byte-exactly and is memory-mapped") {
    TempDir d;
    std::string header = R"({"__metadata__":{"format":"pt","note":"hi"},)"
                         R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                         R"("ids":{"dtype":"I64","shape":[3],"data_offsets":[16,40]},)"
                         R"("h":{"dtype":"F16","shape":[2],"data_offsets":[40,44]},)"
                         R"("b":{"dtype":"BF16","shape":[],"data_offsets":[44,46]},)"
                         R"("m":{"dtype":"BOOL","shape":[2],"data_offsets":[46,48]},)"
                         R"("e":{"dtype":"F64","shape":[0,3],"data_offsets":[48,48]},)"
                         R"("k":{"dtype":"I32","shape":[1],"data_offsets":[48,52]}})";
    std::string data = bytes_of(std::vector<float>{1.5f, -2.f, 0.25f, 1e30f}) +
                       bytes_of(std::vector<int64_t>{-7, 0, int64_t(1) << 40}) +
                       bytes_of(std::vector<uint16_t>{0x3c00, 0xc000}) +  // f16 1, -2
                       bytes_of(std::vector<uint16_t>{0x4049}) +          // bf16 3.140625
                       std::string("\x01\x00", 2) + bytes_of(std::vector<int32_t>{-123456});
    REQUIRE(data.size() == 52);
    std::string path = d.file("hand.safetensors");
    write_bytes(path, st_bytes(header, data));
    io::SafetensorsFile f = io::load_safetensors(path);
    CHECK(f.names() == std::vector<std::string>{"w", "ids", "h", "b", "m", "e", "k"});
    CHECK(f.metadata == io::Metadata{{"format", "pt"}, {"note", "hi"}});
    CHECK(f.at("w").dtype() == kF32);
    CHECK(f.at("w").sizes() == Shape{2, 2});
    CHECK(ct::vals(f.at("w")) == std::vector<double>{1.5, -2, 0.25, double(1e30f)});
    CHECK(to_vector<int64_t>(f.at("ids")) == std::vector<int64_t>{-7, 0, int64_t(1) << 40});
    CHECK(ct::vals(f.at("h")) == std::vector<double>{1, -2});
    CHECK(f.at("b").dim() == 0);
    CHECK(f.at("b").item<float>() == 3.140625f);
    CHECK(to_vector<bool>(f.at("m")) == std::vector<bool>{true, false});
    CHECK(f.at("e").sizes() == Shape{0, 3});
    CHECK(f.at("e").dtype() == kF64);
    CHECK(to_vector<int32_t>(f.at("k")) == std::vector<int32_t>{-123456});
    CHECK(f.find("nope") == nullptr);
    ct::check_error([&] { f.at("nope"); }, {"no tensor named 'nope'"});
    // aligned tensors view the mapping, and keep it alive after the file object is gone
    CHECK(f.at("w").impl().storage->keep_alive != nullptr);
    CHECK(f.at("k").impl().storage->keep_alive != nullptr);
    Tensor w = f.at("w");
    f = io::SafetensorsFile();
    CHECK(ct::vals(w) == std::vector<double>{1.5, -2, 0.25, double(1e30f)});
    // writes stay private: the file does not change
    w.fill_(9);
    CHECK(ct::vals(w)[0] == 9);
    CHECK(ct::vals(io::load_safetensors(path).at("w"))[0] == 1.5);
  }

  TEST_CASE("safetensors: misaligned tensors are copied, not viewed") {
    TempDir d;
    std::string header = R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]},)"
                         R"("x":{"dtype":"F64","shape":[2],"data_offsets":[3,19]},)"
                         R"("y":{"dtype":"I32","shape":[1],"data_offsets":[19,23]}})";
    std::string data = std::string("\x01\x01\x00", 3) + bytes_of(std::vector<double>{0.1, -1e300}) +
                       bytes_of(std::vector<int32_t>{42});
    std::string path = d.file("unaligned.safetensors");
    write_bytes(path, st_bytes(header, data));
    io::SafetensorsFile f = io::load_safetensors(path);
    Tensor x = f.at("x");
    CHECK(reinterpret_cast<uintptr_t>(x.raw_data()) % 8 == 0);
    CHECK(x.impl().storage->keep_alive == nullptr);  // an owned copy
    CHECK(ct::vals(x) == std::vector<double>{0.1, -1e300});
    CHECK(to_vector<int32_t>(f.at("y")) == std::vector<int32_t>{42});
    CHECK(to_vector<bool>(f.at("m")) == std::vector<bool>{true, true, false});
    CHECK(f.at("m").impl().storage->keep_alive != nullptr);  // bytes need no alignment
  }

  TEST_CASE("safetensors: every dtype round-trips bit-exactly, non-contiguous inputs too") {
    TempDir d;
    manual_seed(11);
    io::NamedTensors in;
    for (DType t : {kF32, kF64, kBF16, kF16}) {
      in.emplace_back(std::string("float.") + dtype_name(t), randn({3, 5}, kF32).to(t));
    }
    in.emplace_back("i32", tensor(std::vector<int32_t>{-2147483647 - 1, 0, 2147483647}));
    in.emplace_back("i64", tensor(std::vector<int64_t>{std::numeric_limits<int64_t>::min(), -1, 5,
                                                       std::numeric_limits<int64_t>::max()},
                                  {2, 2}));
    in.emplace_back("bool", tensor(std::vector<bool>{true, false, false, true, true}));
    in.emplace_back("scalar", full({}, 2.5, kF64));
    in.emplace_back("empty", zeros({4, 0, 2}, kBF16));
    Tensor base = randn({4, 6}, kF64);
    in.emplace_back("transposed", base.t());                    // strides (1, 6)
    in.emplace_back("stepped", base.slice(1, 1, 6, 2));         // a strided view
    in.emplace_back("expanded", randn({1, 3}).expand({4, 3}));  // stride 0
    in.emplace_back("offset", base.select(0, 2));               // a view with an offset
    std::string path = d.file("all.safetensors");
    io::save_safetensors(path, in, {{"format", "pt"}});
    io::SafetensorsFile f = io::load_safetensors(path);
    REQUIRE(f.size() == in.size());
    for (size_t i = 0; i < in.size(); ++i) {
      CAPTURE(in[i].first);
      const Tensor& got = f.tensors[i].second;
      CHECK(f.tensors[i].first == in[i].first);
      CHECK(got.dtype() == in[i].second.dtype());
      CHECK(got.sizes() == in[i].second.sizes());
      if (got.numel() > 0) CHECK(got.is_contiguous());  // core calls empty [4, 0, 2] non-contiguous
      CHECK(raw(got) == raw(in[i].second));
    }
    CHECK(f.metadata == io::Metadata{{"format", "pt"}});
    // an empty file (no tensors) is valid too
    io::save_safetensors(d.file("none.safetensors"), {});
    CHECK(io::load_safetensors(d.file("none.safetensors")).size() == 0);
  }

  TEST_CASE("safetensors: a checksum per tensor finds a flipped bit") {
    // the CRC-32C check value of the standard test vector
    CHECK(io::crc32c("123456789", 9) == 0xE3069283u);
    CHECK(io::crc32c("", 0) == 0u);
    TempDir d;
    const std::string path = d.file("ck.safetensors");
    Tensor w = ct::rnd({64, 33}), v = ct::rnd({1000}, kF64);
    io::save_safetensors(path, {{"w", w}, {"v", v}}, {{"format", "pt"}});
    io::SafetensorsFile f = io::load_safetensors(path);
    CHECK(f.metadata == io::Metadata{{"format", "pt"}});  // checksums stay inside the file
    CHECK(ct::vals(f.at("v")) == ct::vals(v));
    // flip one bit of v's bytes (the end of the file), then one of w's
    std::string bytes = read_bytes(path);
    bytes[bytes.size() - 3] ^= 0x10;
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    ct::check_error([&] { io::load_safetensors(path); },
                    {"load_safetensors", "ck.safetensors", "tensor 'v'", "checksum", "corrupted"});
    bytes[bytes.size() - 3] ^= 0x10;
    bytes[bytes.size() - 8000 - 100] ^= 0x01;
    {
      std::ofstream out(path, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    ct::check_error([&] { io::load_safetensors(path); }, {"tensor 'w'", "checksum"});
    // the key space is coil's
    ct::check_error(
        [&] {
          io::save_safetensors(d.file("k.safetensors"), {{"w", w}}, {{"coil.crc32c.w", "0"}});
        },
        {"save_safetensors", "reserved"});
  }

  TEST_CASE("safetensors: saved files have the layout Hugging Face reads") {
    TempDir d;
    std::string path = d.file("x.safetensors");
    Tensor a = tensor(std::vector<float>{1, 2, 3}), b = tensor(std::vector<int64_t>{7}, {1, 1});
    Tensor c = tensor(std::vector<bool>{true});
    io::save_safetensors(path, {{"b_first", b}, {"a", a}, {"c", c}}, {{"format", "pt"}});
    std::string bytes = read_bytes(path);
    REQUIRE(bytes.size() >= 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
    CHECK(n % 8 == 0);  // the data region starts 8-byte aligned
    REQUIRE(bytes.size() == 8 + n + 8 + 12 + 1);
    std::string header = bytes.substr(8, n);
    auto crc = [](const std::string& data) {
      char buf[9];
      std::snprintf(buf, sizeof(buf), "%08x", io::crc32c(data.data(), data.size()));
      return std::string(buf);
    };
    std::string expect = R"({"__metadata__":{"format":"pt","coil.crc32c.b_first":")" + crc(raw(b)) +
                         R"(","coil.crc32c.a":")" + crc(raw(a)) + R"(","coil.crc32c.c":")" +
                         crc(std::string("\x01", 1)) + R"("},)" +
                         R"("b_first":{"dtype":"I64","shape":[1,1],"data_offsets":[0,8]},)"
                         R"("a":{"dtype":"F32","shape":[3],"data_offsets":[8,20]},)"
                         R"("c":{"dtype":"BOOL","shape":[1],"data_offsets":[20,21]}})";
    CHECK(header.substr(0, expect.size()) == expect);
    CHECK(header.find_first_not_of(' ', expect.size()) == std::string::npos);  // space padding
    CHECK(bytes.substr(8 + n) == raw(b) + raw(a) + std::string("\x01", 1));
    // no temporary left behind
    CHECK(tmp_leftovers(d.path).empty());
  }

  TEST_CASE("safetensors: bad files are errors naming the file and tensor") {
    TempDir d;
    int k = 0;
    auto load_bytes = [&](const std::string& bytes) {
      std::string p = d.file("bad" + std::to_string(k++) + ".safetensors");
      write_bytes(p, bytes);
      return p;
    };
    auto bad = [&](const std::string& bytes, std::vector<std::string> frags) {
      std::string p = load_bytes(bytes);
      frags.push_back(p);
      ct::check_error([&] { io::load_safetensors(p); }, frags);
    };
    auto one = [](const std::string& entry) { return "{\"w\":" + entry + "}"; };
    const std::string f32x2 = bytes_of(std::vector<float>{1, 2});

    ct::check_error([&] { io::load_safetensors(d.file("missing.safetensors")); },
                    {"cannot open", "missing.safetensors"});
    ct::check_error([&] { io::load_safetensors(d.path.string()); }, {"not a regular file"});
    bad("", {"0 bytes", "shorter than the 8-byte"});
    bad("abc", {"3 bytes", "shorter"});
    bad(le64(200'000'000) + "{}", {"header length 200000000", "limit"});
    bad(le64(100) + "{}      ", {"header length 100", "past the end", "truncated"});
    bad(le64(uint64_t(-1)) + "{}", {"limit"});
    bad(st_bytes("{\"w\": [", ""), {"json", "end of input"});
    bad(st_bytes("[1, 2]", ""), {"must be a JSON object"});
    bad(st_bytes(one(R"({"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]})"), "ab"),
        {"tensor 'w'", "F8_E4M3", "not supported"});
    bad(st_bytes(one(R"({"dtype":"U8","shape":[2],"data_offsets":[0,2]})"), "ab"),
        {"tensor 'w'", "U8", "not supported"});
    bad(st_bytes(one(R"({"shape":[2],"data_offsets":[0,8]})"), f32x2), {"'w'", "dtype"});
    bad(st_bytes(one(R"({"dtype":"F32","data_offsets":[0,8]})"), f32x2), {"'w'", "shape"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), f32x2),
        {"'w'", "data_offsets"});
    bad(st_bytes(one("3"), f32x2), {"'w'", "expected an object"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), f32x2),
        {"tensor 'w'", "shape [3]", "12 bytes", "span 8"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), f32x2),
        {"tensor 'w'", "negative value -2"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), f32x2),
        {"tensor 'w'", "integers"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[-8,0]})"), f32x2),
        {"tensor 'w'", "negative"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]})"),
                 f32x2),
        {"tensor 'w'", "more than 2^64"});
    // Found by fuzz/fuzz_safetensors: no elements, but strides past int64 (2^40 * 2^40).
    bad(st_bytes(one(R"({"dtype":"F32","shape":[0,1099511627776,1099511627776],)"
                     R"("data_offsets":[0,0]})"),
                 ""),
        {"tensor 'w'", "too large"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[8,16]})"), f32x2),
        {"tensor 'w'", "[8, 16]", "past the data region of 8 bytes"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})"), f32x2),
        {"tensor 'w'", "end before they begin"});
    bad(st_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), f32x2 + "xx"),
        {"10 bytes", "cover only the first 8", "trailing"});
    bad(st_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("v":{"dtype":"F32","shape":[1],"data_offsets":[6,10]}})",
                 f32x2 + "xx"),
        {"tensor 'v'", "[6, 10]", "hole of 2 bytes"});
    bad(st_bytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                 R"("v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 f32x2),
        {"tensor 'v'", "overlap tensor 'w'"});
    bad(st_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", f32x2),
        {"tensor 'w'", "hole of 4 bytes"});
    bad(st_bytes(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                 f32x2),
        {"duplicate key 'w'"});
    bad(st_bytes(R"({"__metadata__":{"format":1}})", ""), {"__metadata__", "'format'", "string"});
    bad(st_bytes(R"({"__metadata__":[]})", ""), {"__metadata__", "object"});
    // the header length not counting its own 8 bytes: a file cut in the data region
    std::string good = st_bytes(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})"), f32x2);
    bad(good.substr(0, good.size() - 1), {"past the data region of 7 bytes"});
    CHECK(ct::vals(io::load_safetensors(load_bytes(good)).at("w")) == std::vector<double>{1, 2});
  }

  TEST_CASE("safetensors: save rejects bad names and undefined tensors") {
    TempDir d;
    std::string p = d.file("s.safetensors");
    Tensor x = ones({2});
    ct::check_error(
        [&] {
          io::save_safetensors(p, {{"a", x}, {"a", x}});
        },
        {"duplicate tensor name 'a'", p});
    ct::check_error([&] { io::save_safetensors(p, {{"__metadata__", x}}); }, {"invalid"});
    ct::check_error([&] { io::save_safetensors(p, {{"", x}}); }, {"invalid"});
    ct::check_error([&] { io::save_safetensors(p, {{"u", Tensor()}}); }, {"'u'", "undefined"});
    ct::check_error(
        [&] {
          io::save_safetensors(p, {}, {{"k", "1"}, {"k", "2"}});
        },
        {"duplicate metadata key 'k'"});
    CHECK(!fs::exists(p));
    ct::check_error(
        [&] {
          io::save_safetensors(d.file("no/such/dir/x.safetensors"), {{"a", x}});
        },
        {"cannot create", "no/such/dir"});
  }

  TEST_CASE("write_file_atomic: success, and a failing writer keeps the old file") {
    TempDir d;
    std::string p = d.file("ckpt.bin");
    io::write_file_atomic(p, [](std::FILE* f) { std::fputs("old", f); });
    CHECK(read_bytes(p) == "old");
    ct::check_error(
        [&] {
          io::write_file_atomic(p, [](std::FILE* f) {
            std::fputs("half-written", f);
            throw std::runtime_error("disk on fire");
          });
        },
        {"write_file_atomic", "ckpt.bin", "disk on fire"});
    CHECK(read_bytes(p) == "old");
    CHECK(tmp_leftovers(d.path).empty());
    ct::check_error([&] { io::write_file_atomic(p, [](std::FILE*) { fail("coil says no"); }); },
                    {"coil says no"});
    CHECK(read_bytes(p) == "old");
    CHECK(tmp_leftovers(d.path).empty());
    io::write_file_atomic(p, [](std::FILE* f) { std::fputs("new", f); });
    CHECK(read_bytes(p) == "new");
    CHECK(tmp_leftovers(d.path).empty());
    CHECK(io::read_file(p) == "new");
    ct::check_error([&] { io::read_file(d.file("absent")); }, {"read_file", "absent"});
    // safetensors saves go through it: a save that fails keeps the previous file intact
    std::string st = d.file("m.safetensors");
    io::save_safetensors(st, {{"a", ones({2})}});
    ct::check_error(
        [&] {
          io::save_safetensors(st, {{"a", ones({2})}, {"a", ones({3})}});
        },
        {"duplicate"});
    CHECK(io::load_safetensors(st).size() == 1);
  }

  TEST_CASE("safetensors: sharded save and directory load round-trip") {
    TempDir d;
    manual_seed(5);
    io::NamedTensors in = {{"backbone.embeddings.weight", randn({8, 4})},     // 128 bytes
                           {"backbone.layers.0.mixer.A_log", randn({4, 4})},  // 64
                           {"backbone.layers.0.mixer.D", randn({4}, kF64)},   // 32
                           {"backbone.layers.1.mixer.A_log", randn({4, 4})},  // 64
                           {"backbone.norm_f.weight", ones({4}, kBF16)},      // 8
                           {"lm_head.weight", randn({12, 4})}};               // 192
    std::string dir = (d.path / "model").string();
    io::save_safetensors_sharded(dir, in, 130);
    // shards: [emb 128] [A_log0 64, D 32] [A_log1 64, norm 8] [lm_head 192]
    const char* names[] = {"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                           "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors"};
    for (const char* n : names) CHECK(fs::exists(fs::path(dir) / n));
    CHECK(!fs::exists(fs::path(dir) / "model.safetensors"));
    Value index = json::parse_file(dir + "/model.safetensors.index.json");
    CHECK(index["metadata"]["total_size"].as_int() == 128 + 64 + 32 + 64 + 8 + 192);
    const auto& wm = index["weight_map"].members();
    REQUIRE(wm.size() == 6);
    CHECK(wm[0].first == "backbone.embeddings.weight");  // sorted by name
    CHECK(wm[1].first == "backbone.layers.0.mixer.A_log");
    CHECK(wm[5].first == "lm_head.weight");
    CHECK(index["weight_map"]["backbone.layers.0.mixer.D"].as_string() == names[1]);
    CHECK(index["weight_map"]["backbone.norm_f.weight"].as_string() == names[2]);
    CHECK(index["weight_map"]["lm_head.weight"].as_string() == names[3]);
    CHECK(io::load_safetensors(fs::path(dir) / names[2]).metadata ==
          io::Metadata{{"format", "pt"}});

    auto check_same = [&](const io::SafetensorsFile& f) {
      REQUIRE(f.size() == in.size());
      for (size_t i = 0; i < in.size(); ++i) {
        CHECK(f.tensors[i].first == in[i].first);
        CHECK(raw(f.tensors[i].second) == raw(in[i].second));
        CHECK(f.tensors[i].second.dtype() == in[i].second.dtype());
      }
    };
    check_same(io::load_safetensors_dir(dir));

    // Re-saved as one file: the stale index and shards go, the loader finds model.safetensors.
    io::save_safetensors_sharded(dir, in, 1 << 20);
    CHECK(fs::exists(fs::path(dir) / "model.safetensors"));
    CHECK(!fs::exists(fs::path(dir) / "model.safetensors.index.json"));
    for (const char* n : names) CHECK(!fs::exists(fs::path(dir) / n));
    check_same(io::load_safetensors_dir(dir));
    CHECK(io::load_safetensors_dir(dir).metadata == io::Metadata{{"format", "pt"}});

    // And sharded again (a tensor larger than the limit gets a shard of its own).
    io::save_safetensors_sharded(dir, in, 1);
    CHECK(!fs::exists(fs::path(dir) / "model.safetensors"));
    CHECK(fs::exists(fs::path(dir) / "model-00006-of-00006.safetensors"));
    check_same(io::load_safetensors_dir(dir));
    CHECK(tmp_leftovers(dir).empty());
    ct::check_error([&] { io::save_safetensors_sharded(dir, in, 0); }, {"max_shard_bytes"});
  }

  TEST_CASE("safetensors: directory errors") {
    TempDir d;
    std::string dir = d.path.string();
    ct::check_error([&] { io::load_safetensors_dir(dir); },
                    {"neither model.safetensors nor model.safetensors.index.json", dir});
    Tensor x = ones({2});
    io::save_safetensors(d.file("s1.safetensors"), {{"a", x}, {"b", x}});
    io::save_safetensors(d.file("s2.safetensors"), {{"c", x}, {"a", x}});
    auto index = [&](const std::string& wm) {
      write_bytes(d.file("model.safetensors.index.json"),
                  R"({"metadata": {"total_size": 0}, "weight_map": )" + wm + "}");
    };
    index(R"({"a": "s1.safetensors", "b": "s1.safetensors", "c": "s3.safetensors"})");
    ct::check_error([&] { io::load_safetensors_dir(dir); }, {"shard 's3.safetensors'", "missing"});
    index(R"({"a": "s1.safetensors", "b": "s1.safetensors", "zz": "s1.safetensors"})");
    ct::check_error([&] { io::load_safetensors_dir(dir); },
                    {"tensor 'zz'", "missing from its shard 's1.safetensors'"});
    index(R"({"b": "s1.safetensors", "a": "s2.safetensors", "c": "s2.safetensors"})");
    ct::check_error(
        [&] { io::load_safetensors_dir(dir); },
        {"tensor 'a'", "in shard 's1.safetensors'", "index puts it in 's2.safetensors'"});
    index(R"({"b": "s1.safetensors", "c": "s2.safetensors"})");
    ct::check_error([&] { io::load_safetensors_dir(dir); },
                    {"tensor 'a'", "two shards", "s1.safetensors", "s2.safetensors"});
    index(R"({"a": "../s1.safetensors"})");
    ct::check_error([&] { io::load_safetensors_dir(dir); }, {"not a file inside the directory"});
    index(R"({"a": "/etc/passwd"})");
    ct::check_error([&] { io::load_safetensors_dir(dir); }, {"not a file inside the directory"});
    index(R"({"a": 3})");
    ct::check_error([&] { io::load_safetensors_dir(dir); }, {"'a'", "file name"});
    write_bytes(d.file("model.safetensors.index.json"), R"({"metadata": {}})");
    ct::check_error([&] { io::load_safetensors_dir(dir); }, {"weight_map"});
    write_bytes(d.file("model.safetensors.index.json"), R"({"weight_map": )");
    ct::check_error([&] { io::load_safetensors_dir(dir); },
                    {"model.safetensors.index.json", "end of input"});
    // a good index: shards in order of first appearance, tensors in file order
    io::save_safetensors(d.file("s2.safetensors"), {{"c", x * 3}});
    index(R"({"c": "s2.safetensors", "a": "s1.safetensors", "b": "s1.safetensors"})");
    io::SafetensorsFile f = io::load_safetensors_dir(dir);
    CHECK(f.names() == std::vector<std::string>{"c", "a", "b"});
    CHECK(ct::vals(f.at("c")) == std::vector<double>{3, 3});
  }
}
