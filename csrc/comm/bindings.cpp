// Python face of the communicator. Arrays arrive as raw addresses (the Python layer validates
// dtype, shape, contiguity and writability first, and keeps the arrays alive during the call);
// every call that can wait releases the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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
int g_type_nums[6] = {-1, -1, -1, -1, -1, -1};

int reducible_code(int type_num) {
  for (int i = 0; i < 6; ++i)
    if (g_type_nums[i] == type_num) return i;
  return -1;
}

// Where an array lives in a symmetric buffer (Communicator.empty): follows the bases to the
// exporter (numpy.frombuffer keeps a memoryview of it). Leaves the outputs at 0 otherwise,
// e.g. for an address passed as an integer.
struct SymmetricPlace {
  int64_t stride = 0;
  uint32_t tag = 0;
  int32_t offset = 0;  // in elements from the start of this rank's region
};

SymmetricPlace symmetric_place(py::handle obj, size_t esz) {
  SymmetricPlace place;
  if (!py::isinstance<py::array>(obj)) return place;
  auto* a = py::detail::array_proxy(obj.ptr());
  PyObject* base = a->base;
  while (base && py::isinstance<py::array>(base)) base = py::detail::array_proxy(base)->base;
  if (base && PyMemoryView_Check(base)) base = PyMemoryView_GET_BASE(base);
  if (base && py::isinstance<SymmetricSegment>(base)) {
    auto& seg = py::handle(base).cast<SymmetricSegment&>();
    place.stride = int64_t(seg.stride());
    place.tag = seg.tag;
    place.offset = int32_t((a->data - seg.mine()) / int64_t(esz ? esz : 1));
  }
  return place;
}

void raise_as(const char* cls, const char* msg) {
  py::object errors = py::module_::import("shardcore.errors");
  PyErr_SetString(errors.attr(cls).ptr(), msg);
}


// --- the all-reduce fast path ------------------------------------------------------------------
// Communicator.all_reduce is the hot call of tensor parallelism (one or two per layer per token),
// and a Python method plus a pybind11 dispatch cost more than the 8-byte collective itself. Each
// Python Communicator therefore gets, as an instance attribute that shadows the documented
// method, a callable written against the CPython vectorcall protocol: it takes the common cases
// (an array reduced in place or into a matching, disjoint `out`, op given by name, automatic
// algorithm) straight to the core, and hands every other call — other argument forms, anything
// that needs an error message — to the Python method, which validates and raises.
struct FastAllReduce {
  PyObject_HEAD
  vectorcallfunc vectorcall;
  Communicator* comm;  // owned by `core`
  PyObject* core;      // the pybind11 Comm object: keeps `comm` alive
  PyObject* owner;     // weak reference to the Python Communicator
  PyObject* slow;      // the Python method (an unbound function): slow(owner, *args, **kwargs)
  unsigned long long hits;  // calls the fast path completed (tests check that it is taken)
};

PyObject* g_op_names[4];  // interned "sum", "max", "min", "prod", in RedOp order
PyObject* g_kw_x;
PyObject* g_kw_op;
PyObject* g_kw_out;
PyObject* g_kw_algorithm;

// RedOp code of an op name, -1 when `o` is not one of them.
int op_from_name(PyObject* o) {
  for (int i = 0; i < 4; ++i)
    if (o == g_op_names[i]) return i;
  if (!PyUnicode_Check(o)) return -1;
  for (int i = 0; i < 4; ++i)
    if (PyUnicode_Compare(o, g_op_names[i]) == 0) return i;
  return -1;
}

PyObject* fast_all_reduce_slow(FastAllReduce* self, PyObject* const* args, size_t nargsf,
                               PyObject* kwnames) {
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
    PyErr_SetString(PyExc_RuntimeError, "all_reduce: the communicator no longer exists");
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

PyObject* fast_all_reduce_call(PyObject* callable, PyObject* const* args, size_t nargsf,
                               PyObject* kwnames) {
  auto* self = reinterpret_cast<FastAllReduce*>(callable);
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  // all_reduce(x, op="sum", out=None, algorithm=None)
  PyObject* slots[4] = {nullptr, nullptr, nullptr, nullptr};
  if (nargs > 4) return fast_all_reduce_slow(self, args, nargsf, kwnames);
  for (Py_ssize_t i = 0; i < nargs; ++i) slots[i] = args[i];
  if (kwnames) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(kwnames); ++k) {
      PyObject* name = PyTuple_GET_ITEM(kwnames, k);
      int idx = name == g_kw_x ? 0 : name == g_kw_op ? 1 : name == g_kw_out ? 2 : name == g_kw_algorithm ? 3 : -1;
      if (idx < 0 || slots[idx]) return fast_all_reduce_slow(self, args, nargsf, kwnames);
      slots[idx] = args[nargs + k];
    }
  }
  PyObject* x = slots[0];
  if (x == nullptr) return fast_all_reduce_slow(self, args, nargsf, kwnames);
  PyObject* out = slots[2] == Py_None ? nullptr : slots[2];
  if (slots[3] && slots[3] != Py_None) return fast_all_reduce_slow(self, args, nargsf, kwnames);
  const int op = slots[1] ? op_from_name(slots[1]) : int(RedOp::kSum);
  auto& api = py::detail::npy_api::get();
  if (op < 0 || !api.PyArray_Check_(x)) return fast_all_reduce_slow(self, args, nargsf, kwnames);
  auto* a = py::detail::array_proxy(x);
  const int contiguous = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_;
  const int writeable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  const int type_num = py::detail::array_descriptor_proxy(a->descr)->type_num;
  const int code = reducible_code(type_num);
  if (code < 0 || (a->flags & contiguous) == 0)
    return fast_all_reduce_slow(self, args, nargsf, kwnames);
  size_t count = 1;
  for (int i = 0; i < a->nd; ++i) count *= size_t(a->dimensions[i]);
  const size_t esz = dtype_size(DType(code));
  char* dst = a->data;
  SymmetricPlace sym;
  if (out == nullptr || out == x) {
    if ((a->flags & writeable) == 0) return fast_all_reduce_slow(self, args, nargsf, kwnames);
    out = x;
    if (a->base) sym = symmetric_place(x, esz);
  } else {
    // A separate output: an array of the same dtype and shape, writeable, C-contiguous, and
    // not overlapping x (both are contiguous, so their byte ranges say it).
    if (!api.PyArray_Check_(out)) return fast_all_reduce_slow(self, args, nargsf, kwnames);
    auto* o = py::detail::array_proxy(out);
    if ((o->flags & (contiguous | writeable)) != (contiguous | writeable) || o->nd != a->nd ||
        py::detail::array_descriptor_proxy(o->descr)->type_num != type_num)
      return fast_all_reduce_slow(self, args, nargsf, kwnames);
    for (int i = 0; i < a->nd; ++i)
      if (o->dimensions[i] != a->dimensions[i]) return fast_all_reduce_slow(self, args, nargsf, kwnames);
    const size_t bytes = count * esz;
    if (bytes && o->data < a->data + bytes && a->data < o->data + bytes)
      return fast_all_reduce_slow(self, args, nargsf, kwnames);
    dst = o->data;
  }
  Communicator* c = self->comm;
  PyThreadState* ts = PyEval_SaveThread();
  try {
    c->all_reduce(a->data, dst, count, DType(code), RedOp(op), Algo::kAuto, sym.stride, sym.tag,
                  sym.offset);
  } catch (...) {
    PyEval_RestoreThread(ts);
    try {
      throw;
    } catch (py::error_already_set& e) {  // the interrupt check's KeyboardInterrupt
      e.restore();
    } catch (...) {
      py::detail::try_translate_exceptions();
    }
    return nullptr;
  }
  PyEval_RestoreThread(ts);
  self->hits += 1;
  Py_INCREF(out);
  return out;
}

void fast_all_reduce_dealloc(PyObject* o) {
  auto* self = reinterpret_cast<FastAllReduce*>(o);
  Py_XDECREF(self->core);
  Py_XDECREF(self->owner);
  Py_XDECREF(self->slow);
  Py_TYPE(o)->tp_free(o);
}

// The Python method's name, docstring and signature (less `self`), for help() and inspect.
PyObject* fast_all_reduce_get(PyObject* o, void* what) {
  auto* self = reinterpret_cast<FastAllReduce*>(o);
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
PyGetSetDef g_fast_all_reduce_getset[] = {
    {k_name, fast_all_reduce_get, nullptr, nullptr, k_name},
    {k_qualname, fast_all_reduce_get, nullptr, nullptr, k_qualname},
    {k_doc, fast_all_reduce_get, nullptr, nullptr, k_doc},
    {k_signature, fast_all_reduce_get, nullptr, nullptr, k_signature},
    {k_hits, fast_all_reduce_get, nullptr, nullptr, k_hits},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyTypeObject g_fast_all_reduce_type;  // filled in by register_fast_all_reduce

PyObject* make_fast_all_reduce(py::handle core, py::handle owner, py::handle slow) {
  auto* self = PyObject_New(FastAllReduce, &g_fast_all_reduce_type);
  if (!self) throw py::error_already_set();
  self->vectorcall = fast_all_reduce_call;
  self->hits = 0;
  self->comm = &core.cast<Communicator&>();
  self->core = core.inc_ref().ptr();
  self->slow = slow.inc_ref().ptr();
  self->owner = PyWeakref_NewRef(owner.ptr(), nullptr);
  if (!self->owner) {
    Py_DECREF(reinterpret_cast<PyObject*>(self));
    throw py::error_already_set();
  }
  return reinterpret_cast<PyObject*>(self);
}

void register_fast_all_reduce(py::module_& m) {
  const char* names[4] = {"sum", "max", "min", "prod"};
  for (int i = 0; i < 4; ++i) g_op_names[i] = PyUnicode_InternFromString(names[i]);
  g_kw_x = PyUnicode_InternFromString("x");
  g_kw_op = PyUnicode_InternFromString("op");
  g_kw_out = PyUnicode_InternFromString("out");
  g_kw_algorithm = PyUnicode_InternFromString("algorithm");
  PyTypeObject& t = g_fast_all_reduce_type;
  Py_SET_REFCNT(reinterpret_cast<PyObject*>(&t), 1);
  t.tp_name = "shardcore._core.FastAllReduce";
  t.tp_basicsize = sizeof(FastAllReduce);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL;
  t.tp_vectorcall_offset = offsetof(FastAllReduce, vectorcall);
  t.tp_call = PyVectorcall_Call;
  t.tp_dealloc = fast_all_reduce_dealloc;
  t.tp_getset = g_fast_all_reduce_getset;
  if (PyType_Ready(&t) < 0) throw py::error_already_set();
  m.def(
      "fast_all_reduce",
      [](py::handle core, py::handle owner, py::handle slow) {
        return py::reinterpret_steal<py::object>(make_fast_all_reduce(core, owner, slow));
      },
      "The vectorcall all_reduce bound to one communicator (core, Python owner, slow method).");
}

}  // namespace

void register_comm(py::module_& m) {
  register_fast_all_reduce(m);
  m.def("reduce_kernel", [] { return std::string(reduce_kernel_name()); },
        "The reduction kernels chosen for this CPU (SHARDCORE_KERNEL=generic forces the portable ones).");
  m.def("set_type_nums", [](const std::vector<int>& nums) {
    for (size_t i = 0; i < 6 && i < nums.size(); ++i) g_type_nums[i] = nums[i];
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
      .def(py::init<const std::string&, int, int, size_t, bool>(), py::arg("name"),
           py::arg("rank"), py::arg("size"), py::arg("nbytes"), py::arg("create"))
      .def("unlink", &SymmetricSegment::unlink)
      .def_property_readonly("stride", &SymmetricSegment::stride)
      .def_property_readonly("address", [](const SymmetricSegment& s) {
        return reinterpret_cast<uintptr_t>(s.mine());
      })
      .def_property_readonly("nbytes", &SymmetricSegment::bytes)
      .def_readwrite("tag", &SymmetricSegment::tag)
      .def_buffer([](SymmetricSegment& s) {
        return py::buffer_info(s.mine(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {py::ssize_t(s.bytes())}, {py::ssize_t(1)});
      });

  py::class_<Communicator>(m, "Comm", "A shared-memory communicator (see shardcore.Communicator).")
      .def(py::init([](const std::string& name, int rank, int size, size_t slot_bytes,
                       size_t p2p_bytes, double timeout, double spin_us, size_t one_shot_max,
                       size_t two_shot_max) {
             Options o;
             o.one_shot_max = one_shot_max;
             o.two_shot_max = two_shot_max;
             o.slot_bytes = slot_bytes;
             o.p2p_bytes = p2p_bytes;
             o.timeout_s = timeout;
             o.spin_us = spin_us;
             Communicator* c;
             {
               py::gil_scoped_release nogil;
               c = new Communicator(name, rank, size, o);
             }
             c->set_interrupt_check([] {
               py::gil_scoped_acquire gil;
               if (PyErr_CheckSignals() != 0) throw py::error_already_set();
             });
             return c;
           }),
           py::arg("name"), py::arg("rank"), py::arg("size"), py::arg("slot_bytes"),
           py::arg("p2p_bytes"), py::arg("timeout"), py::arg("spin_us"),
           py::arg("one_shot_max") = 0, py::arg("two_shot_max") = 0)
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
            const SymmetricPlace sym = symmetric_place(in, dtype_size(DType(dt)));
            {
              py::gil_scoped_release nogil;
              used = c.all_reduce(src, dst, count, DType(dt), RedOp(op), Algo(algo), sym.stride,
                                  sym.tag, sym.offset);
            }
            return algo_name(used);
          },
          py::arg("inp"), py::arg("out"), py::arg("count"), py::arg("dtype"), py::arg("op"),
          py::arg("algorithm"))
      .def(
          "all_reduce_fast",
          // The common case without Python-level checks: a fresh (base-less), C-contiguous,
          // writeable array of a reducible dtype, reduced in place with the automatic choice.
          // Returns None when the array is anything else, and the Python path takes over.
          [](Communicator& c, py::handle obj, uint32_t op) -> py::object {
            if (!py::isinstance<py::array>(obj)) return py::none();
            auto* a = py::detail::array_proxy(obj.ptr());
            const int need = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ |
                             py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            if ((a->flags & need) != need) return py::none();
            int code = reducible_code(py::detail::array_descriptor_proxy(a->descr)->type_num);
            if (code < 0) return py::none();
            size_t count = 1;
            for (int i = 0; i < a->nd; ++i) count *= size_t(a->dimensions[i]);
            // A view of a symmetric buffer takes the symmetric path.
            const SymmetricPlace sym =
                a->base ? symmetric_place(obj, dtype_size(DType(code))) : SymmetricPlace{};
            Algo used;
            {
              py::gil_scoped_release nogil;
              used = c.all_reduce(a->data, a->data, count, DType(code), RedOp(op), Algo::kAuto,
                                  sym.stride, sym.tag, sym.offset);
            }
            return py::str(algo_name(used));
          })
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
            {
              py::gil_scoped_release nogil;
              used = c.all_gather(src, dst, m, DType(dt), esz,
                                  internal ? Kind::kInternal : Kind::kAllGather, Algo(algo));
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
            Algo used;
            {
              py::gil_scoped_release nogil;
              used = c.all_to_all(src, dst, m, DType(dt), esz, Algo(algo));
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
          [](Communicator& c, py::handle in, py::handle out) {
            const char* src = addr(in);
            char* dst = addr(out);
            py::gil_scoped_release nogil;
            c.all_to_allv_data(src, dst);
          })
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
