// Python face of the communicator. Arrays arrive as raw addresses (the Python layer validates
// dtype, shape, contiguity and writability first, and keeps the arrays alive during the call);
// every call that can wait releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "comm/communicator.h"
#include "comm/reduce.h"
#include "comm/symmetric.h"
#include "module.h"

namespace py = pybind11;

namespace shardcore {
namespace {

// A buffer argument: a NumPy array (its data pointer, read without building
// __array_interface__) or an integer address (the torch backend passes tensors' addresses).
// Called with the GIL held; the caller keeps the object alive for the call.
char* addr(py::handle h) {
  if (PyLong_Check(h.ptr())) {
    void* p = PyLong_AsVoidPtr(h.ptr());
    if (!p && PyErr_Occurred()) throw py::error_already_set();
    return static_cast<char*>(p);
  }
  if (py::isinstance<py::array>(h)) return static_cast<char*>(py::detail::array_proxy(h.ptr())->data);
  throw py::type_error("expected a numpy array or an address");
}

// numpy type numbers of the reducible dtypes, in DType order, registered from Python
// (set_type_nums): bfloat16's is assigned at run time by ml_dtypes, int64's differs by platform.
// Also int8, uint8 and bool (codes 6-8), which move but do not reduce.
constexpr int kTypeCodes = 9;
int g_type_nums[kTypeCodes] = {-1, -1, -1, -1, -1, -1, -1, -1, -1};

int type_code(int type_num) {
  for (int i = 0; i < kTypeCodes; ++i)
    if (g_type_nums[i] == type_num) return i;
  return -1;
}

// The symmetric buffer (Communicator.empty) an array lives in: follows the bases to the exporter
// (numpy.frombuffer keeps a memoryview of it). nullptr otherwise, e.g. for an address passed as
// an integer. Whether the buffer counts for a collective is the core's decision
// (Communicator::symmetric_place: made on that communicator, holding the whole array).
const SymmetricSegment* symmetric_buffer(py::handle obj) {
  if (!py::isinstance<py::array>(obj)) return nullptr;
  auto* a = py::detail::array_proxy(obj.ptr());
  PyObject* base = a->base;
  while (base && py::isinstance<py::array>(base)) base = py::detail::array_proxy(base)->base;
  if (base && PyMemoryView_Check(base)) base = PyMemoryView_GET_BASE(base);
  if (base && py::isinstance<SymmetricSegment>(base))
    return &py::handle(base).cast<const SymmetricSegment&>();
  return nullptr;
}

void raise_as(const char* cls, const char* msg) {
  py::object errors = py::module_::import("shardcore.errors");
  PyErr_SetString(errors.attr(cls).ptr(), msg);
}


// --- fast paths from Python --------------------------------------------------------------------
// A Python method plus a pybind11 dispatch cost more than a small collective itself (several
// hundred ns of checks for an 8-byte all-reduce that takes a few hundred ns). So each Python
// Communicator gets, as instance attributes that shadow its documented methods, callables written
// against the CPython vectorcall protocol: they take the common argument forms straight to the
// core and hand every other call — unusual arguments, and anything that needs an error message —
// to the Python method, which validates and raises. Both paths pass the core the same
// arguments, so ranks may mix them freely.
enum class FastKind : int {
  kAllReduce, kReduceScatter, kBroadcast, kSend, kRecv, kAllGather, kAllToAll, kCount
};

struct FastCall {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  FastKind kind;
  Communicator* comm;  // owned by `core`
  PyObject* core;      // the pybind11 Comm object: keeps `comm` alive
  PyObject* owner;     // weak reference to the Python Communicator
  PyObject* slow;      // the Python method (an unbound function): slow(owner, *args, **kwargs)
  unsigned long long hits;  // calls the fast path completed (tests check that it is taken)
};

constexpr int kMaxParams = 4;
// Parameter names of each method, in order, interned at module init.
const char* const k_param_names[int(FastKind::kCount)][kMaxParams] = {
    {"x", "op", "out", "algorithm"},  // all_reduce
    {"x", "op", "out", nullptr},      // reduce_scatter
    {"x", "root", nullptr, nullptr},  // broadcast
    {"x", "dst", "tag", nullptr},     // send
    {"out", "src", "tag", nullptr},   // recv
    {"x", "out", "algorithm", nullptr},  // all_gather
    {"x", "out", "algorithm", nullptr},  // all_to_all
};
PyObject* g_params[int(FastKind::kCount)][kMaxParams];
PyObject* g_op_names[4];  // interned "sum", "max", "min", "prod", in RedOp order

// RedOp code of an op name, -1 when `o` is not one of them.
int op_from_name(PyObject* o) {
  for (int i = 0; i < 4; ++i)
    if (o == g_op_names[i]) return i;
  if (!PyUnicode_Check(o)) return -1;
  for (int i = 0; i < 4; ++i)
    if (PyUnicode_Compare(o, g_op_names[i]) == 0) return i;
  return -1;
}

// An exact Python int (not bool) in [lo, hi), else false.
bool small_int(PyObject* o, long lo, long hi, long* v) {
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  *v = PyLong_AsLongAndOverflow(o, &overflow);
  if (overflow || (*v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  return *v >= lo && *v < hi;
}

// A C-contiguous NumPy array of a dtype with a core code (0-8, native byte order): what the fast
// paths take. Anything else goes to the Python method.
struct Arr {
  py::detail::PyArray_Proxy* a = nullptr;
  int code = -1;
  size_t count = 0, esz = 0;
  size_t bytes() const { return count * esz; }
  bool writeable() const { return a->flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_; }
};

bool as_array(PyObject* o, Arr* arr, bool reducible) {
  if (!py::detail::npy_api::get().PyArray_Check_(o)) return false;
  auto* a = py::detail::array_proxy(o);
  if (!(a->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) return false;
  auto* d = py::detail::array_descriptor_proxy(a->descr);
  if (d->byteorder == '>') return false;  // non-native (x86-64 and aarch64 are little-endian)
  const int code = type_code(d->type_num);
  if (code < 0 || (reducible && code > 5)) return false;
  arr->a = a;
  arr->code = code;
  arr->esz = dtype_size(DType(code));
  arr->count = 1;
  for (int i = 0; i < a->nd; ++i) arr->count *= size_t(a->dimensions[i]);
  return true;
}

bool same_layout(const Arr& x, const Arr& y) {
  if (x.code != y.code || x.a->nd != y.a->nd) return false;
  for (int i = 0; i < x.a->nd; ++i)
    if (x.a->dimensions[i] != y.a->dimensions[i]) return false;
  return true;
}

bool disjoint(const Arr& x, const Arr& y) {
  const size_t nx = x.bytes(), ny = y.bytes();
  return nx == 0 || ny == 0 || y.a->data >= x.a->data + nx || x.a->data >= y.a->data + ny;
}

// A new, uninitialised C-contiguous array like `like` with first dimension `rows` (a 0-d `like`
// gives a vector of `rows`).
PyObject* new_array(const Arr& like, Py_intptr_t rows) {
  auto& api = py::detail::npy_api::get();
  std::vector<Py_intptr_t> dims(like.a->dimensions, like.a->dimensions + like.a->nd);
  if (dims.empty()) dims.push_back(rows);
  dims[0] = rows;
  Py_INCREF(like.a->descr);  // NewFromDescr steals it
  return api.PyArray_NewFromDescr_(api.PyArray_Type_, like.a->descr, int(dims.size()), dims.data(),
                                   nullptr, nullptr, 0, nullptr);
}

// Runs `f` on the core with the GIL released; false (a Python error set) if it threw.
template <typename F>
bool run_released(F&& f) {
  PyThreadState* ts = PyEval_SaveThread();
  try {
    f();
  } catch (...) {
    PyEval_RestoreThread(ts);
    try {
      throw;
    } catch (py::error_already_set& e) {  // the interrupt check's KeyboardInterrupt
      e.restore();
    } catch (...) {
      py::detail::try_translate_exceptions();
    }
    return false;
  }
  PyEval_RestoreThread(ts);
  return true;
}

PyObject* const kFallback = Py_Ellipsis;  // sentinel: not a fast case (never returned to Python)

PyObject* fast_all_reduce(Communicator& c, PyObject* const* v) {
  // all_reduce(x, op="sum", out=None, algorithm=None)
  if (v[3] && v[3] != Py_None) return kFallback;
  const int op = v[1] ? op_from_name(v[1]) : int(RedOp::kSum);
  Arr x, o;
  if (op < 0 || !as_array(v[0], &x, true)) return kFallback;
  PyObject* out = v[2] == Py_None ? nullptr : v[2];
  char* dst = x.a->data;
  const SymmetricSegment* sym = nullptr;
  if (out == nullptr || out == v[0]) {
    if (!x.writeable()) return kFallback;
    out = v[0];
    if (x.a->base) sym = symmetric_buffer(v[0]);
  } else {
    if (!as_array(out, &o, true) || !o.writeable() || !same_layout(x, o) || !disjoint(x, o))
      return kFallback;
    dst = o.a->data;
  }
  if (!run_released([&] {
        c.all_reduce(x.a->data, dst, x.count, DType(x.code), RedOp(op), Algo::kAuto, sym);
      }))
    return nullptr;
  Py_INCREF(out);
  return out;
}

// The output of a call whose result is shaped like x with `rows` rows (a 0-d x: a vector of
// `rows`): the caller's `given` array if it is writeable, of x's dtype and that shape, or a new
// one (kept alive in `owned`) where none was given. kFallback for a `given` that does not fit (the
// Python method says why); kError when allocating failed (a Python error is set).
enum class OutStatus { kOk, kFallback, kError };
OutStatus output_rows(const Arr& x, Py_intptr_t rows, PyObject* given, py::object* owned,
                      PyObject** out, Arr* o) {
  if (given == nullptr || given == Py_None) {
    *owned = py::reinterpret_steal<py::object>(new_array(x, rows));
    if (!*owned) return OutStatus::kError;
    *out = owned->ptr();
    as_array(*out, o, false);
    return OutStatus::kOk;
  }
  if (!as_array(given, o, false) || !o->writeable() || o->code != x.code ||
      o->a->nd != std::max(x.a->nd, 1) || o->a->dimensions[0] != rows)
    return OutStatus::kFallback;
  for (int i = 1; i < x.a->nd; ++i)
    if (o->a->dimensions[i] != x.a->dimensions[i]) return OutStatus::kFallback;
  *out = given;
  return OutStatus::kOk;
}

PyObject* fast_reduce_scatter(Communicator& c, PyObject* const* v) {
  // reduce_scatter(x, op="sum", out=None)
  const int op = v[1] ? op_from_name(v[1]) : int(RedOp::kSum);
  Arr x, o;
  if (op < 0 || !as_array(v[0], &x, true) || x.a->nd == 0 || x.a->dimensions[0] % c.size())
    return kFallback;
  py::object owned;
  PyObject* out = nullptr;
  const OutStatus st = output_rows(x, x.a->dimensions[0] / c.size(), v[2], &owned, &out, &o);
  if (st == OutStatus::kError) return nullptr;
  if (st == OutStatus::kFallback || !disjoint(x, o)) return kFallback;
  if (!run_released([&] { c.reduce_scatter(x.a->data, o.a->data, o.count, DType(x.code), RedOp(op)); }))
    return nullptr;
  Py_INCREF(out);
  return out;
}

PyObject* fast_broadcast(Communicator& c, PyObject* const* v) {
  // broadcast(x, root=0)
  Arr x;
  long root = 0;
  if (!as_array(v[0], &x, false) || (v[1] && !small_int(v[1], 0, c.size(), &root)) ||
      (root != c.rank() && !x.writeable()))
    return kFallback;
  if (!run_released([&] { c.broadcast(x.a->data, x.count, DType(x.code), x.esz, int(root)); }))
    return nullptr;
  Py_INCREF(v[0]);
  return v[0];
}

bool tag_of(PyObject* o, int64_t* tag) {
  if (o == nullptr) return (*tag = 0, true);
  if (!PyLong_CheckExact(o)) return false;
  int overflow = 0;
  const long long t = PyLong_AsLongLongAndOverflow(o, &overflow);
  if (overflow || (t == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  *tag = int64_t(t);
  return true;
}

PyObject* fast_send(Communicator& c, PyObject* const* v) {
  // send(x, dst, tag=0)
  Arr x;
  long dst = 0;
  int64_t tag = 0;
  if (!v[1] || !as_array(v[0], &x, false) || !small_int(v[1], 0, c.size(), &dst) ||
      dst == c.rank() || !tag_of(v[2], &tag))
    return kFallback;
  if (!run_released([&] { c.send(x.a->data, x.count, DType(x.code), x.esz, int(dst), tag); }))
    return nullptr;
  Py_RETURN_NONE;
}

PyObject* fast_recv(Communicator& c, PyObject* const* v) {
  // recv(out, src, tag=0)
  Arr o;
  long src = 0;
  int64_t tag = 0;
  if (!v[1] || !as_array(v[0], &o, false) || !o.writeable() || !small_int(v[1], 0, c.size(), &src) ||
      src == c.rank() || !tag_of(v[2], &tag))
    return kFallback;
  if (!run_released([&] { c.recv(o.a->data, o.count, DType(o.code), o.esz, int(src), tag); }))
    return nullptr;
  Py_INCREF(v[0]);
  return v[0];
}

// all_gather(x, out=None, algorithm=None) and all_to_all(x, out=None, algorithm=None).
PyObject* fast_gather(Communicator& c, PyObject* const* v, bool all_to_all) {
  if (v[2] && v[2] != Py_None) return kFallback;
  Arr x, o;
  if (!as_array(v[0], &x, false)) return kFallback;
  const int n = c.size();
  if (all_to_all && (x.a->nd == 0 || x.a->dimensions[0] % n)) return kFallback;
  const Py_intptr_t rows = all_to_all ? x.a->dimensions[0] : (x.a->nd ? x.a->dimensions[0] : 1) * n;
  py::object owned;
  PyObject* out = nullptr;
  const OutStatus st = output_rows(x, rows, v[1], &owned, &out, &o);
  if (st == OutStatus::kError) return nullptr;
  if (st == OutStatus::kFallback) return kFallback;
  // An all-gather may run in place (x is this rank's block of out); nothing else may overlap.
  const bool in_place = !all_to_all && x.a->data == o.a->data + size_t(c.rank()) * x.bytes();
  if (!disjoint(x, o) && !in_place) return kFallback;
  const SymmetricSegment* sym = x.a->base ? symmetric_buffer(v[0]) : nullptr;
  const size_t m = all_to_all ? x.count / size_t(n) : x.count;
  if (!run_released([&] {
        if (all_to_all)
          c.all_to_all(x.a->data, o.a->data, m, DType(x.code), x.esz, Algo::kAuto, sym);
        else
          c.all_gather(x.a->data, o.a->data, m, DType(x.code), x.esz, Kind::kAllGather,
                       Algo::kAuto, sym);
      }))
    return nullptr;
  Py_INCREF(out);
  return out;
}

PyObject* fast_all_gather(Communicator& c, PyObject* const* v) { return fast_gather(c, v, false); }
PyObject* fast_all_to_all(Communicator& c, PyObject* const* v) { return fast_gather(c, v, true); }

using FastFn = PyObject* (*)(Communicator&, PyObject* const*);
const FastFn k_fast_fns[int(FastKind::kCount)] = {fast_all_reduce, fast_reduce_scatter,
                                                   fast_broadcast,  fast_send,
                                                   fast_recv,       fast_all_gather,
                                                   fast_all_to_all};

PyObject* fast_call_slow(FastCall* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
#if PY_VERSION_HEX >= 0x030D0000
  PyObject* owner = nullptr;  // a new reference
  if (PyWeakref_GetRef(self->owner, &owner) < 0) return nullptr;
#else
  PyObject* owner = PyWeakref_GetObject(self->owner);  // borrowed
  if (owner == nullptr) return nullptr;
  if (owner == Py_None) owner = nullptr;
  Py_XINCREF(owner);
#endif
  if (owner == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "the communicator of this method no longer exists");
    return nullptr;
  }
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  const Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  std::vector<PyObject*> full(size_t(1 + nargs + nkw));
  full[0] = owner;
  for (Py_ssize_t i = 0; i < nargs + nkw; ++i) full[size_t(1 + i)] = args[i];
  PyObject* r = PyObject_Vectorcall(self->slow, full.data(), size_t(1 + nargs), kwnames);
  Py_DECREF(owner);
  return r;
}

PyObject* fast_call(PyObject* callable, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  auto* self = reinterpret_cast<FastCall*>(callable);
  const int kind = int(self->kind);
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  PyObject* v[kMaxParams] = {nullptr, nullptr, nullptr, nullptr};
  if (nargs > kMaxParams) return fast_call_slow(self, args, nargsf, kwnames);
  for (Py_ssize_t i = 0; i < nargs; ++i) {
    if (g_params[kind][i] == nullptr) return fast_call_slow(self, args, nargsf, kwnames);
    v[i] = args[i];
  }
  if (kwnames) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); ++k) {
      PyObject* name = PyTuple_GET_ITEM(kwnames, k);
      int idx = -1;
      for (int i = 0; i < kMaxParams; ++i)
        if (g_params[kind][i] && name == g_params[kind][i]) idx = i;
      if (idx < 0 || v[idx]) return fast_call_slow(self, args, nargsf, kwnames);
      v[idx] = args[nargs + k];
    }
  }
  if (v[0] == nullptr) return fast_call_slow(self, args, nargsf, kwnames);
  PyObject* r = k_fast_fns[kind](*self->comm, v);
  if (r == kFallback) return fast_call_slow(self, args, nargsf, kwnames);
  if (r) self->hits += 1;
  return r;
}

void fast_call_dealloc(PyObject* o) {
  auto* self = reinterpret_cast<FastCall*>(o);
  Py_XDECREF(self->core);
  Py_XDECREF(self->owner);
  Py_XDECREF(self->slow);
  Py_TYPE(o)->tp_free(o);
}

// The Python method's name, docstring and signature (less `self`), for help() and inspect.
PyObject* fast_call_get(PyObject* o, void* what) {
  auto* self = reinterpret_cast<FastCall*>(o);
  const char* attr = static_cast<const char*>(what);
  if (std::strcmp(attr, "hits") == 0) return PyLong_FromUnsignedLongLong(self->hits);
  if (std::strcmp(attr, "__signature__") != 0) return PyObject_GetAttrString(self->slow, attr);
  try {
    py::object sig = py::module_::import("inspect").attr("signature")(py::handle(self->slow));
    py::list params(sig.attr("parameters").attr("values")());
    py::list bound;
    for (size_t i = 1; i < params.size(); ++i) bound.append(params[i]);
    return sig.attr("replace")(py::arg("parameters") = bound).release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
    return nullptr;
  }
}

char k_name[] = "__name__", k_qualname[] = "__qualname__", k_doc[] = "__doc__",
     k_signature[] = "__signature__", k_hits[] = "hits";
PyGetSetDef g_fast_call_getset[] = {
    {k_name, fast_call_get, nullptr, nullptr, k_name},
    {k_qualname, fast_call_get, nullptr, nullptr, k_qualname},
    {k_doc, fast_call_get, nullptr, nullptr, k_doc},
    {k_signature, fast_call_get, nullptr, nullptr, k_signature},
    {k_hits, fast_call_get, nullptr, nullptr, k_hits},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject g_fast_call_type;  // filled in by register_fast_calls

void register_fast_calls(py::module_& m) {
  const char* names[4] = {"sum", "max", "min", "prod"};
  for (int i = 0; i < 4; ++i) g_op_names[i] = PyUnicode_InternFromString(names[i]);
  for (int k = 0; k < int(FastKind::kCount); ++k)
    for (int i = 0; i < kMaxParams; ++i)
      g_params[k][i] = k_param_names[k][i] ? PyUnicode_InternFromString(k_param_names[k][i]) : nullptr;
  PyTypeObject& t = g_fast_call_type;
  Py_SET_REFCNT(reinterpret_cast<PyObject*>(&t), 1);
  t.tp_name = "shardcore._core.FastCall";
  t.tp_basicsize = sizeof(FastCall);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL;
  t.tp_vectorcall_offset = offsetof(FastCall, vectorcall);
  t.tp_call = PyVectorcall_Call;
  t.tp_dealloc = fast_call_dealloc;
  t.tp_getset = g_fast_call_getset;
  if (PyType_Ready(&t) < 0) throw py::error_already_set();
  m.def(
      "fast_call",
      [](const std::string& method, py::handle core, py::handle owner, py::handle slow) {
        static const char* methods[] = {"all_reduce", "reduce_scatter", "broadcast", "send",
                                        "recv",       "all_gather",     "all_to_all"};
        int kind = -1;
        for (int k = 0; k < int(FastKind::kCount); ++k)
          if (method == methods[k]) kind = k;
        if (kind < 0) throw py::value_error("fast_call: no fast path for '" + method + "'");
        auto* self = PyObject_New(FastCall, &g_fast_call_type);
        if (!self) throw py::error_already_set();
        self->vectorcall = fast_call;
        self->kind = FastKind(kind);
        self->hits = 0;
        self->comm = &core.cast<Communicator&>();
        self->core = core.inc_ref().ptr();
        self->slow = slow.inc_ref().ptr();
        self->owner = PyWeakref_NewRef(owner.ptr(), nullptr);
        auto obj = py::reinterpret_steal<py::object>(reinterpret_cast<PyObject*>(self));
        if (!self->owner) throw py::error_already_set();
        return obj;
      },
      "The vectorcall fast path of one Communicator method (name, core, Python owner, method).");
}

}  // namespace

void register_comm(py::module_& m) {
  register_fast_calls(m);
  m.def("reduce_kernel", [] { return std::string(reduce_kernel_name()); },
        "The reduction kernels chosen for this CPU (SHARDCORE_KERNEL=generic forces the portable ones).");
  m.def("set_type_nums", [](const std::vector<int>& nums) {
    for (size_t i = 0; i < size_t(kTypeCodes) && i < nums.size(); ++i) g_type_nums[i] = nums[i];
  });
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Mismatch& e) {
      raise_as("CollectiveMismatchError", e.what());
    } catch (const Timeout& e) {
      raise_as("CommTimeoutError", e.what());
    } catch (const PeerFailure& e) {
      raise_as("PeerFailureError", e.what());
    }
  });

  py::class_<SymmetricSegment>(m, "SymmetricSegment", py::buffer_protocol(),
                               "Shared memory holding one equal region per rank.")
      .def(py::init([](Communicator& c, size_t nbytes) {
             py::gil_scoped_release nogil;
             return new SymmetricSegment(c, nbytes);
           }),
           py::arg("comm"), py::arg("nbytes"),
           "Collective: every rank maps the buffer, or every rank raises the same error.")
      .def_property_readonly("stride", &SymmetricSegment::stride)
      .def_property_readonly("address", [](const SymmetricSegment& s) {
        return reinterpret_cast<uintptr_t>(s.mine());
      })
      .def_property_readonly("nbytes", &SymmetricSegment::bytes)
      .def_property_readonly("tag", &SymmetricSegment::tag)
      .def_buffer([](SymmetricSegment& s) {
        return py::buffer_info(s.mine(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {py::ssize_t(s.bytes())}, {py::ssize_t(1)});
      });

  py::class_<Communicator>(m, "Comm", "A shared-memory communicator (see shardcore.Communicator).")
      .def(py::init([](const std::string& name, int rank, int size, size_t slot_bytes,
                       size_t p2p_bytes, double timeout, double spin_us, size_t one_shot_max,
                       size_t two_shot_max, double yield_us) {
             Options o;
             o.yield_us = yield_us;
             o.one_shot_max = one_shot_max;
             o.two_shot_max = two_shot_max;
             o.slot_bytes = slot_bytes;
             o.p2p_bytes = p2p_bytes;
             o.timeout_s = timeout;
             o.spin_us = spin_us;
             // Ctrl-C reaches a rank that waits for its peers, connecting or in a collective.
             o.interrupt_check = [] {
               py::gil_scoped_acquire gil;
               if (PyErr_CheckSignals() != 0) throw py::error_already_set();
             };
             py::gil_scoped_release nogil;
             return new Communicator(name, rank, size, o);
           }),
           py::arg("name"), py::arg("rank"), py::arg("size"), py::arg("slot_bytes"),
           py::arg("p2p_bytes"), py::arg("timeout"), py::arg("spin_us"),
           py::arg("one_shot_max") = 0, py::arg("two_shot_max") = 0, py::arg("yield_us") = -1.0)
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size)
      .def_property_readonly("name", &Communicator::name)
      .def_property_readonly("slot_bytes", &Communicator::slot_bytes)
      .def_property_readonly("one_shot_max", &Communicator::one_shot_max)
      .def_property_readonly("cma", &Communicator::cma)
      .def_property_readonly("two_shot_max", &Communicator::two_shot_max)
      .def_property_readonly("closed", &Communicator::closed)
      .def_property("timeout", &Communicator::timeout, &Communicator::set_timeout)
      .def("barrier", &Communicator::barrier, py::call_guard<py::gil_scoped_release>())
      .def(
          "all_reduce",
          [](Communicator& c, py::handle in, py::handle out, size_t count, uint32_t dt, uint32_t op,
             uint32_t algo) {
            Algo used;
            const char* src = addr(in);
            char* dst = addr(out);
            const SymmetricSegment* sym = symmetric_buffer(in);
            {
              py::gil_scoped_release nogil;
              used = c.all_reduce(src, dst, count, DType(dt), RedOp(op), Algo(algo), sym);
            }
            return algo_name(used);
          },
          py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("op"),
          py::arg("algorithm"))
      .def(
          "reduce_scatter",
          [](Communicator& c, py::handle in, py::handle out, size_t m, uint32_t dt, uint32_t op) {
            const char* src = addr(in);
            char* dst = addr(out);
            py::gil_scoped_release nogil;
            c.reduce_scatter(src, dst, m, DType(dt), RedOp(op));
          })
      .def(
          "all_gather",
          [](Communicator& c, py::handle in, py::handle out, size_t m, uint32_t dt, size_t esz,
             bool internal, uint32_t algo) {
            Algo used;
            const char* src = addr(in);
            char* dst = addr(out);
            const SymmetricSegment* sym = symmetric_buffer(in);
            {
              py::gil_scoped_release nogil;
              used = c.all_gather(src, dst, m, DType(dt), esz,
                                  internal ? Kind::kInternal : Kind::kAllGather, Algo(algo), sym);
            }
            return algo_name(used);
          },
          py::arg("inp"), py::arg("out"), py::arg("m"), py::arg("dtype"), py::arg("esz"),
          py::arg("internal") = false, py::arg("algorithm") = 0)
      .def(
          "all_to_all",
          [](Communicator& c, py::handle in, py::handle out, size_t m, uint32_t dt, size_t esz,
             uint32_t algo) {
            const char* src = addr(in);
            char* dst = addr(out);
            const SymmetricSegment* sym = symmetric_buffer(in);
            Algo used;
            {
              py::gil_scoped_release nogil;
              used = c.all_to_all(src, dst, m, DType(dt), esz, Algo(algo), sym);
            }
            return algo_name(used);
          },
          py::arg("inp"), py::arg("out"), py::arg("m"), py::arg("dtype"), py::arg("esz"),
          py::arg("algorithm") = 0)
      .def(
          "all_to_allv_counts",
          [](Communicator& c, const std::vector<int64_t>& counts, size_t row, uint32_t dt, size_t esz) {
            return c.all_to_allv_counts(counts, row, DType(dt), esz);
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "all_to_allv_data",
          [](Communicator& c, py::handle in, py::handle out, int64_t out_rows) {
            const char* src = addr(in);
            char* dst = addr(out);
            py::gil_scoped_release nogil;
            c.all_to_allv_data(src, dst, out_rows);
          },
          py::arg("inp"), py::arg("out"), py::arg("out_rows"))
      .def(
          "broadcast",
          [](Communicator& c, py::handle buf, size_t count, uint32_t dt, size_t esz, int root) {
            char* p = addr(buf);
            py::gil_scoped_release nogil;
            c.broadcast(p, count, DType(dt), esz, root);
          })
      .def(
          "send",
          [](Communicator& c, py::handle buf, size_t count, uint32_t dt, size_t esz, int dst,
             int64_t tag) {
            const char* p = addr(buf);
            py::gil_scoped_release nogil;
            c.send(p, count, DType(dt), esz, dst, tag);
          })
      .def(
          "recv",
          [](Communicator& c, py::handle buf, size_t count, uint32_t dt, size_t esz, int src,
             int64_t tag) {
            char* p = addr(buf);
            py::gil_scoped_release nogil;
            c.recv(p, count, DType(dt), esz, src, tag);
          })
      .def(
          "reject",
          [](Communicator& c, const std::string& kind, const std::string& why) {
            int k = 0;
            while (k < int(Kind::kCount) && kind != kind_name(Kind(k))) ++k;
            if (k == int(Kind::kCount)) throw py::value_error("reject: no collective '" + kind + "'");
            py::gil_scoped_release nogil;
            c.reject(Kind(k), why);
          },
          py::arg("kind"), py::arg("why"),
          "Collective: this rank's call of `kind` has bad arguments; every rank's raises.")
      .def("abort", &Communicator::abort)
      .def("close", &Communicator::close)
      .def("reset_traffic", &Communicator::reset_traffic)
      .def_property_readonly("last_algorithm",
                             [](const Communicator& c) -> py::object {
                               if (c.last_algorithm() == Algo::kAuto) return py::none();
                               return py::str(algo_name(c.last_algorithm()));
                             })
      .def("traffic", [](const Communicator& c) {
        py::dict out;
        for (size_t k = 0; k < size_t(Kind::kCount); ++k) {
          const TrafficCounts& t = c.traffic(Kind(k));
          py::dict algos;
          for (size_t a = 0; a < size_t(Algo::kCount); ++a)
            if (t.algo_calls[a]) algos[algo_name(Algo(a))] = t.algo_calls[a];
          py::dict entry;
          entry["calls"] = t.calls;
          entry["sent"] = t.sent;
          entry["recv"] = t.recv;
          entry["algorithms"] = algos;
          out[kind_name(Kind(k))] = entry;
        }
        return out;
      });
}

}  // namespace shardcore
