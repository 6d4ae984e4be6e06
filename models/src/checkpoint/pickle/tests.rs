use super::*;

/// Assembles opcode streams by hand.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn proto(v: u8) -> Self {
        P(vec![op::PROTO, v])
    }
    fn op(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn uni(self, s: &str) -> Self {
        let n = (s.len() as u32).to_le_bytes();
        self.op(op::BINUNICODE).raw(&n).raw(s.as_bytes())
    }
    fn short_uni(self, s: &str) -> Self {
        self.op(op::SHORT_BINUNICODE)
            .raw(&[s.len() as u8])
            .raw(s.as_bytes())
    }
    fn int1(self, v: u8) -> Self {
        self.op(op::BININT1).raw(&[v])
    }
    fn put(self, i: u8) -> Self {
        self.op(op::BINPUT).raw(&[i])
    }
    fn get(self, i: u8) -> Self {
        self.op(op::BINGET).raw(&[i])
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(op::GLOBAL)
            .raw(module.as_bytes())
            .raw(b"\n")
            .raw(name.as_bytes())
            .raw(b"\n")
    }
    fn stop(self) -> Vec<u8> {
        self.op(op::STOP).0
    }
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn err_of(bytes: &[u8]) -> PickleError {
    match load(bytes) {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// A torch-like state dict: OrderedDict, two tensors over one storage, a Parameter, and the
/// `_metadata` BUILD that module.state_dict() adds.
fn torch_like() -> Vec<u8> {
    let tensor = |p: P, storage: &dyn Fn(P) -> P, offset: u8, shape: &[u8], stride: &[u8]| {
        // The caller has pushed the callable (memo 3).
        let mut p = storage(p.op(op::MARK)).int1(offset).op(op::MARK);
        for &d in shape {
            p = p.int1(d);
        }
        p = p.op(op::TUPLE).op(op::MARK);
        for &d in stride {
            p = p.int1(d);
        }
        p.op(op::TUPLE)
            .op(op::NEWFALSE)
            .get(0)
            .op(op::EMPTY_TUPLE)
            .op(op::REDUCE)
            .op(op::TUPLE)
            .op(op::REDUCE)
    };
    let first_storage = |p: P| {
        p.op(op::MARK)
            .uni("storage")
            .put(4)
            .global("torch", "FloatStorage")
            .put(5)
            .uni("0")
            .put(6)
            .uni("cpu")
            .put(7)
            .int1(6)
            .op(op::TUPLE)
            .put(8)
            .op(op::BINPERSID)
    };
    let same_storage = |p: P| p.get(8).op(op::BINPERSID);
    let mut p = P::proto(2)
        .global("collections", "OrderedDict")
        .put(0)
        .op(op::EMPTY_TUPLE)
        .op(op::REDUCE)
        .put(1)
        .op(op::MARK)
        .uni("w")
        .global("torch._utils", "_rebuild_tensor_v2")
        .put(3);
    p = tensor(p, &first_storage, 0, &[2, 3], &[3, 1]);
    p = p.uni("wt").get(3);
    p = tensor(p, &same_storage, 1, &[3, 2], &[1, 3]);
    p = p
        .uni("p")
        .global("torch._utils", "_rebuild_parameter")
        .op(op::MARK)
        .get(3);
    p = tensor(p, &same_storage, 0, &[6], &[1]);
    p = p
        .op(op::NEWTRUE)
        .get(0)
        .op(op::EMPTY_TUPLE)
        .op(op::REDUCE)
        .op(op::TUPLE)
        .op(op::REDUCE)
        .op(op::SETITEMS);
    // BUILD state {'_metadata': OrderedDict()} on the OrderedDict: ignored.
    p.op(op::EMPTY_DICT)
        .uni("_metadata")
        .get(0)
        .op(op::EMPTY_TUPLE)
        .op(op::REDUCE)
        .op(op::SETITEM)
        .op(op::BUILD)
        .stop()
}

#[test]
fn plain_dict_proto2() {
    let bytes = P::proto(2)
        .op(op::EMPTY_DICT)
        .put(0)
        .op(op::MARK)
        .uni("a")
        .int1(1)
        .uni("b")
        .op(op::BINFLOAT)
        .raw(&1.5f64.to_be_bytes())
        .uni("c")
        .op(op::NONE)
        .uni("d")
        .op(op::NEWTRUE)
        .uni("e")
        .op(op::BININT)
        .raw(&(-7i32).to_le_bytes())
        .uni("f")
        .op(op::BININT2)
        .raw(&40000u16.to_le_bytes())
        .op(op::SETITEMS)
        .stop();
    let d = load_dict(&bytes).unwrap();
    assert_eq!(
        d,
        vec![
            (s("a"), Value::Int(1)),
            (s("b"), Value::Float(1.5)),
            (s("c"), Value::None),
            (s("d"), Value::Bool(true)),
            (s("e"), Value::Int(-7)),
            (s("f"), Value::Int(40000)),
        ]
    );
}

#[test]
fn torch_state_dict_tensors_parameters_and_metadata() {
    let d = load_dict(&torch_like()).unwrap();
    let names: Vec<_> = d.iter().map(|(k, _)| k.as_str().unwrap()).collect();
    assert_eq!(names, ["w", "wt", "p"]);
    let storage = StorageRef {
        dtype: DType::F32,
        key: "0".into(),
        location: "cpu".into(),
        numel: 6,
    };
    let t = |i: usize| d[i].1.as_tensor().unwrap().clone();
    assert_eq!(
        t(0),
        TensorRef {
            storage: storage.clone(),
            offset: 0,
            shape: vec![2, 3],
            stride: vec![3, 1],
            requires_grad: false,
        }
    );
    assert_eq!(t(1).offset, 1);
    assert_eq!(t(1).shape, [3, 2]);
    assert_eq!(t(1).stride, [1, 3]);
    assert_eq!(t(1).storage, storage);
    // The Parameter unwraps to its tensor.
    assert_eq!(t(2).shape, [6]);
    assert_eq!(t(2).dtype(), DType::F32);
}

#[test]
fn memo_holds_built_objects() {
    // dict: a -> scalar(f8 dtype built with '<', 2.25), b -> BINGET of that scalar,
    // c -> a new scalar whose dtype is a BINGET of the dtype mutated by BUILD.
    let dtype_state = |p: P| {
        p.op(op::MARK)
            .int1(3)
            .short_uni("<")
            .op(op::NONE)
            .op(op::NONE)
            .op(op::NONE)
            .op(op::BININT)
            .raw(&(-1i32).to_le_bytes())
            .op(op::BININT)
            .raw(&(-1i32).to_le_bytes())
            .int1(0)
            .op(op::TUPLE)
    };
    let p = P::proto(4)
        .op(op::EMPTY_DICT)
        .op(op::MEMOIZE) // 0
        .op(op::MARK)
        .short_uni("a")
        .op(op::MEMOIZE) // 1
        .short_uni("numpy.core.multiarray")
        .op(op::MEMOIZE) // 2
        .short_uni("scalar")
        .op(op::MEMOIZE) // 3
        .op(op::STACK_GLOBAL)
        .op(op::MEMOIZE) // 4
        .short_uni("numpy")
        .op(op::MEMOIZE) // 5
        .short_uni("dtype")
        .op(op::MEMOIZE) // 6
        .op(op::STACK_GLOBAL)
        .op(op::MEMOIZE) // 7
        .short_uni("f8")
        .op(op::MEMOIZE) // 8
        .op(op::NEWFALSE)
        .op(op::NEWTRUE)
        .op(op::TUPLE3)
        .op(op::MEMOIZE) // 9
        .op(op::REDUCE)
        .op(op::MEMOIZE); // 10: the dtype, before BUILD
    let p = dtype_state(p)
        .op(op::MEMOIZE) // 11
        .op(op::BUILD)
        .op(op::SHORT_BINBYTES)
        .raw(&[8])
        .raw(&2.25f64.to_le_bytes())
        .op(op::MEMOIZE) // 12
        .op(op::TUPLE2)
        .op(op::MEMOIZE) // 13
        .op(op::REDUCE)
        .op(op::MEMOIZE) // 14: the scalar
        .short_uni("b")
        .op(op::MEMOIZE)
        .get(14)
        .short_uni("c")
        .op(op::MEMOIZE)
        .get(4)
        .get(10)
        .op(op::SHORT_BINBYTES)
        .raw(&[8])
        .raw(&(-0.5f64).to_le_bytes())
        .op(op::TUPLE2)
        .op(op::REDUCE)
        .short_uni("key_again")
        .get(1) // the string "a" as a value
        .op(op::SETITEMS);
    let d = load_dict(&p.stop()).unwrap();
    assert_eq!(
        d,
        vec![
            (s("a"), Value::Float(2.25)),
            (s("b"), Value::Float(2.25)),
            (s("c"), Value::Float(-0.5)),
            (s("key_again"), s("a")),
        ]
    );
}

#[test]
fn frames_lists_tuples_bytes() {
    let body = P::default()
        .op(op::EMPTY_LIST)
        .put(0)
        .int1(1)
        .op(op::APPEND)
        .op(op::MARK)
        .int1(2)
        .op(op::EMPTY_TUPLE)
        .int1(3)
        .op(op::TUPLE1)
        .int1(4)
        .int1(5)
        .op(op::TUPLE2)
        .int1(6)
        .int1(7)
        .int1(8)
        .op(op::TUPLE3)
        .op(op::MARK)
        .int1(9)
        .op(op::TUPLE)
        .op(op::SHORT_BINBYTES)
        .raw(&[2, 0xde, 0xad])
        .op(op::BINBYTES)
        .raw(&1u32.to_le_bytes())
        .raw(&[7])
        .op(op::BINUNICODE8)
        .raw(&3u64.to_le_bytes())
        .raw(b"abc")
        .op(op::APPENDS)
        .stop();
    let mut bytes = vec![op::PROTO, 4, op::FRAME];
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    let v = load(&bytes).unwrap();
    assert_eq!(
        v,
        Value::List(vec![
            Value::Int(1),
            Value::Int(2),
            Value::Tuple(vec![]),
            Value::Tuple(vec![Value::Int(3)]),
            Value::Tuple(vec![Value::Int(4), Value::Int(5)]),
            Value::Tuple(vec![Value::Int(6), Value::Int(7), Value::Int(8)]),
            Value::Tuple(vec![Value::Int(9)]),
            Value::Bytes(vec![0xde, 0xad]),
            Value::Bytes(vec![7]),
            s("abc"),
        ])
    );
}

#[test]
fn long1_integers() {
    let long = |b: &[u8]| {
        let bytes = P::proto(2).op(op::LONG1).raw(&[b.len() as u8]).raw(b).stop();
        load(&bytes)
    };
    assert_eq!(long(&[]).unwrap(), Value::Int(0));
    assert_eq!(long(&[0xff]).unwrap(), Value::Int(-1));
    assert_eq!(long(&[0x00, 0x80, 0x00]).unwrap(), Value::Int(32768));
    assert_eq!(long(&[0x00, 0x80]).unwrap(), Value::Int(-32768));
    let big = (1i64 << 40) + 5;
    assert_eq!(long(&big.to_le_bytes()[..6]).unwrap(), Value::Int(big));
    assert_eq!(long(&i64::MIN.to_le_bytes()).unwrap(), Value::Int(i64::MIN));
    // Sign extension beyond 8 bytes is fine; real 65-bit values are not.
    assert_eq!(long(&[0xff; 9]).unwrap(), Value::Int(-1));
    let mut too_big = [0u8; 9];
    too_big[8] = 1;
    assert_eq!(long(&too_big).unwrap_err().kind, PickleErrorKind::Malformed);
    // 2**63 needs 9 bytes (00 .. 80 00) and does not fit.
    let mut two63 = [0u8; 9];
    two63[7] = 0x80;
    assert!(long(&two63).is_err());
}

#[test]
fn repeated_key_keeps_first_position_and_last_value() {
    let bytes = P::proto(2)
        .op(op::EMPTY_DICT)
        .op(op::MARK)
        .uni("x")
        .int1(1)
        .uni("y")
        .int1(2)
        .uni("x")
        .int1(3)
        .int1(1)
        .int1(4)
        .op(op::NEWTRUE) // True == 1 in Python
        .int1(5)
        .op(op::SETITEMS)
        .stop();
    assert_eq!(
        load_dict(&bytes).unwrap(),
        vec![
            (s("x"), Value::Int(3)),
            (s("y"), Value::Int(2)),
            (Value::Int(1), Value::Int(5)),
        ]
    );
}

#[test]
fn refuses_unlisted_globals_without_running_them() {
    // pickle.dumps of os.system('echo pwned') via REDUCE.
    let bytes = P::proto(2)
        .global("os", "system")
        .put(0)
        .uni("echo pwned")
        .op(op::TUPLE1)
        .op(op::REDUCE)
        .stop();
    let e = err_of(&bytes);
    assert_eq!(e.kind, PickleErrorKind::RefusedGlobal("os.system".into()));
    assert_eq!(e.offset, 2);
    assert!(e.message.contains("`os.system`"), "{e}");
    assert!(e.message.contains("never executes"), "{e}");

    // The same through STACK_GLOBAL.
    let bytes = P::proto(4)
        .short_uni("builtins")
        .short_uni("eval")
        .op(op::STACK_GLOBAL)
        .stop();
    let e = err_of(&bytes);
    assert_eq!(e.kind, PickleErrorKind::RefusedGlobal("builtins.eval".into()));

    // A whole pickled model gets a hint.
    let bytes = P::proto(2)
        .global("transformers.models.bert", "BertForMaskedLM")
        .stop();
    assert!(err_of(&bytes).message.contains("state_dict()"));

    // STACK_GLOBAL with non-strings.
    let bytes = P::proto(4).int1(1).int1(2).op(op::STACK_GLOBAL).stop();
    assert_eq!(err_of(&bytes).kind, PickleErrorKind::Malformed);
}

#[test]
fn unsupported_opcodes_are_named() {
    let bytes = P::proto(2)
        .global("collections", "OrderedDict")
        .op(op::EMPTY_TUPLE)
        .op(0x81)
        .stop();
    let e = err_of(&bytes);
    assert_eq!(e.kind, PickleErrorKind::UnsupportedOpcode(0x81));
    assert_eq!(e.offset, 28);
    assert!(e.message.contains("0x81 (NEWOBJ)"), "{e}");
    let e = err_of(&[0x80, 2, 0xff]);
    assert_eq!(e.kind, PickleErrorKind::UnsupportedOpcode(0xff));
    assert_eq!(e.offset, 2);
    // Protocol 6 does not exist (yet).
    assert_eq!(err_of(&[0x80, 6, b'N', b'.']).kind, PickleErrorKind::Malformed);
}

#[test]
fn every_truncation_is_an_error() {
    let full = torch_like();
    assert!(load(&full).is_ok());
    for n in 0..full.len() {
        let e = err_of(&full[..n]);
        assert_eq!(e.kind, PickleErrorKind::Truncated, "prefix {n}: {e}");
        assert!(e.offset <= n, "prefix {n}: offset {}", e.offset);
    }
}

#[test]
fn huge_declared_lengths_do_not_allocate() {
    let cases: [&[u8]; 6] = [
        &[0x80, 4, op::BINUNICODE, 0xff, 0xff, 0xff, 0xff, b'a'],
        &[
            0x80,
            4,
            op::BINUNICODE8,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
        ],
        &[0x80, 4, op::BINBYTES, 0xff, 0xff, 0xff, 0x7f],
        &[0x80, 4, op::BINBYTES8, 0, 0, 0, 0, 0, 0, 0, 0x80],
        &[0x80, 4, op::FRAME, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        &[0x80, 4, op::SHORT_BINUNICODE, 200, b'a', b'b'],
    ];
    for bytes in cases {
        let e = err_of(bytes);
        assert_eq!(e.kind, PickleErrorKind::Truncated, "{e}");
        assert_eq!(e.offset, 2);
    }
    // GLOBAL without its newline.
    assert_eq!(err_of(b"\x80\x02cos\nsys").kind, PickleErrorKind::Truncated);
}

#[test]
fn malformed_programs_are_errors() {
    let malformed: [&[u8]; 12] = [
        b".",                                  // STOP on an empty stack
        b"\x80\x02h\x05.",                     // memo index never stored
        b"\x80\x02(R.",                        // REDUCE through a MARK
        b"\x80\x02t.",                         // TUPLE without MARK
        b"\x80\x02}(K\x01u.",                  // SETITEMS with an odd count
        b"\x80\x02K\x01K\x02a.",               // APPEND to an int
        b"\x80\x02K\x01(K\x02u.",              // SETITEMS on an int
        b"\x80\x02}]K\x01s.",                  // unhashable key
        b"\x80\x02K\x01)R.",                   // calling an int
        b"\x80\x02K\x01}b.",                   // BUILD on an int
        b"\x80\x02X\x02\x00\x00\x00\xff\xfe.", // invalid UTF-8
        b"\x80\x02K\x01Q.",                    // persistent id that is not a tuple
    ];
    for bytes in malformed {
        let e = err_of(bytes);
        assert_eq!(e.kind, PickleErrorKind::Malformed, "{bytes:?}: {e}");
    }
    // _rebuild_tensor_v2 calls: `head` pushes the callable, the argument MARK and a storage.
    let call = |head: P, offset: &[u8], size: &[u8], stride: &[u8]| {
        let mut p = head.raw(offset).op(op::MARK);
        for &d in size {
            p = p.int1(d);
        }
        p = p.op(op::TUPLE).op(op::MARK);
        for &d in stride {
            p = p.int1(d);
        }
        p.op(op::TUPLE)
            .op(op::NEWFALSE)
            .op(op::NONE)
            .op(op::TUPLE)
            .op(op::REDUCE)
            .stop()
    };
    let callable = || {
        P::proto(2)
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(op::MARK)
    };
    let with_storage = || {
        callable()
            .op(op::MARK)
            .uni("storage")
            .global("torch", "HalfStorage")
            .uni("0")
            .uni("cpu")
            .int1(4)
            .op(op::TUPLE)
            .op(op::BINPERSID)
    };
    let zero = [op::BININT1, 0];
    let v = load(&call(with_storage(), &zero, &[2, 2], &[2, 1])).unwrap();
    assert_eq!(v.as_tensor().unwrap().dtype(), DType::F16);
    assert_eq!(v.as_tensor().unwrap().storage.numel, 4);
    // An int where the storage should be.
    let e = err_of(&call(callable().int1(1), &zero, &[2], &[1]));
    assert!(e.message.contains("expected a storage"), "{e}");
    let e = err_of(&call(with_storage(), &zero, &[2, 2], &[1]));
    assert!(e.message.contains("2 sizes but 1 strides"), "{e}");
    let mut minus_two = vec![op::BININT];
    minus_two.extend((-2i32).to_le_bytes());
    let e = err_of(&call(with_storage(), &minus_two, &[2], &[1]));
    assert!(e.message.contains("negative"), "{e}");
    // Persistent ids of another kind.
    let pid = P::proto(2)
        .op(op::MARK)
        .uni("module")
        .global("torch", "FloatStorage")
        .uni("0")
        .uni("cpu")
        .int1(1)
        .op(op::TUPLE)
        .op(op::BINPERSID)
        .stop();
    assert!(err_of(&pid).message.contains("`module`"));
}

#[test]
fn numpy_dtype_checks() {
    let scalar = |dtype: &str, order: &str, raw: &[u8]| {
        P::proto(4)
            .short_uni("numpy._core.multiarray")
            .short_uni("scalar")
            .op(op::STACK_GLOBAL)
            .short_uni("numpy")
            .short_uni("dtype")
            .op(op::STACK_GLOBAL)
            .short_uni(dtype)
            .op(op::NEWFALSE)
            .op(op::NEWTRUE)
            .op(op::TUPLE3)
            .op(op::REDUCE)
            .op(op::MARK)
            .int1(3)
            .short_uni(order)
            .op(op::NONE)
            .op(op::NONE)
            .op(op::NONE)
            .int1(0)
            .int1(0)
            .int1(0)
            .op(op::TUPLE)
            .op(op::BUILD)
            .op(op::SHORT_BINBYTES)
            .raw(&[raw.len() as u8])
            .raw(raw)
            .op(op::TUPLE2)
            .op(op::REDUCE)
            .stop()
    };
    let ok = |d: &str, o: &str, raw: &[u8]| load(&scalar(d, o, raw)).unwrap();
    assert_eq!(ok("f8", "<", &0.1f64.to_le_bytes()), Value::Float(0.1));
    assert_eq!(ok("f4", "<", &0.1f32.to_le_bytes()), Value::Float(0.1f32 as f64));
    assert_eq!(ok("i2", "<", &(-3i16).to_le_bytes()), Value::Int(-3));
    assert_eq!(ok("i4", "<", &(-70000i32).to_le_bytes()), Value::Int(-70000));
    assert_eq!(ok("i8", "<", &(-1i64 << 40).to_le_bytes()), Value::Int(-1 << 40));
    assert_eq!(ok("u1", "|", &[200]), Value::Int(200));
    assert_eq!(ok("i1", "|", &[0xff]), Value::Int(-1));
    assert_eq!(ok("b1", "|", &[1]), Value::Bool(true));
    let e = err_of(&scalar("f8", ">", &0.1f64.to_be_bytes()));
    assert!(e.message.contains("big-endian"), "{e}");
    let e = err_of(&scalar("<U3", "<", b"abc"));
    assert!(e.message.contains("not supported"), "{e}");
    let e = err_of(&scalar("f8", "<", &[0; 4]));
    assert!(e.message.contains("4 bytes, expected 8"), "{e}");
    let e = err_of(&scalar(">f8", "<", &[0; 8]));
    assert!(e.message.contains("big-endian"), "{e}");
}

#[test]
fn exponential_sharing_is_refused() {
    // l0 = []; l_{k+1} = [l_k, l_k]: 40 doublings in a few hundred bytes.
    let mut p = P::proto(2).op(op::EMPTY_LIST).put(0);
    for k in 1..=40u8 {
        p = p
            .op(op::EMPTY_LIST)
            .op(op::MARK)
            .get(k - 1)
            .get(k - 1)
            .op(op::APPENDS)
            .put(k);
    }
    let e = err_of(&p.stop());
    assert_eq!(e.kind, PickleErrorKind::LimitExceeded, "{e}");

    // A long string used as a dict key over and over.
    let long = "k".repeat(4000);
    let mut p = P::proto(2).uni(&long).put(0).op(op::EMPTY_DICT);
    for _ in 0..2000 {
        p = p.get(0).int1(1).op(op::SETITEM);
    }
    // The string itself is left below the dict on the stack; STOP returns the dict.
    let e = err_of(&p.stop());
    assert_eq!(e.kind, PickleErrorKind::LimitExceeded, "{e}");
}

#[test]
fn self_reference_and_deep_nesting_are_refused() {
    // l = []; l.append(l)
    let e = err_of(b"\x80\x02]q\x00h\x00a.");
    assert_eq!(e.kind, PickleErrorKind::LimitExceeded, "{e}");
    // 100k nested tuples: no stack overflow.
    let mut bytes = vec![0x80, 2];
    bytes.extend(std::iter::repeat_n(op::MARK, 100_000));
    bytes.extend(std::iter::repeat_n(op::TUPLE, 100_000));
    bytes.push(op::STOP);
    assert_eq!(err_of(&bytes).kind, PickleErrorKind::LimitExceeded);
    // ...nor as a dict key.
    let mut bytes = vec![0x80, 2, op::EMPTY_DICT];
    bytes.extend(std::iter::repeat_n(op::MARK, 100_000));
    bytes.extend(std::iter::repeat_n(op::TUPLE, 100_000));
    bytes.extend([op::NONE, op::SETITEM, op::STOP]);
    assert_eq!(err_of(&bytes).kind, PickleErrorKind::LimitExceeded);
}

#[test]
fn random_mutations_never_panic() {
    let seeds = [
        torch_like(),
        std::fs::read(fixture("numpy_scalars_p4.pkl")).unwrap(),
    ];
    // A small deterministic LCG: no dependency, same cases every run.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    for seed in &seeds {
        for _ in 0..3000 {
            let mut b = seed.clone();
            for _ in 0..1 + next() % 4 {
                let i = next() % b.len();
                match next() % 3 {
                    0 => b[i] = next() as u8,
                    1 => b[i] ^= 1 << (next() % 8),
                    _ => b.truncate(i.max(1)),
                }
                if b.is_empty() {
                    break;
                }
            }
            let _ = load(&b);
        }
    }
}

fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/pickle/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn numpy_scalar_fixtures_match_python() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("numpy_scalars.expected.json")).unwrap())
            .unwrap();
    let expected = expected.as_array().unwrap();
    for file in ["numpy_scalars_p4.pkl", "numpy_scalars_p5.pkl"] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let d = load_dict(&bytes).unwrap();
        assert_eq!(d.len(), expected.len(), "{file}");
        for ((k, v), e) in d.iter().zip(expected) {
            let e = e.as_array().unwrap();
            assert_eq!(k.as_str(), e[0].as_str(), "{file}");
            match e[1].as_str().unwrap() {
                "float" => {
                    let bits = e[2].as_u64().unwrap();
                    assert_eq!(v, &Value::Float(f64::from_bits(bits)), "{file} {k:?}");
                }
                _ => assert_eq!(v, &Value::Int(e[2].as_i64().unwrap()), "{file} {k:?}"),
            }
        }
    }
}

// ---- the real Geneformer dictionaries (skipped when the shared data is absent) -----------

fn geneformer(rel: &str) -> Option<Vec<(Value, Value)>> {
    let path = crate::test_data::shared_data(&format!("geneformer/{rel}"))?;
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(load_dict(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[test]
fn geneformer_v2_token_dictionary() {
    let Some(d) = geneformer("v2/token_dictionary_gc104M.pkl") else {
        return;
    };
    assert_eq!(d.len(), 20_275);
    let special: Vec<_> = d[..4]
        .iter()
        .map(|(k, v)| (k.as_str().unwrap(), v.clone()))
        .collect();
    assert_eq!(
        special,
        [
            ("<pad>", Value::Int(0)),
            ("<mask>", Value::Int(1)),
            ("<cls>", Value::Int(2)),
            ("<eos>", Value::Int(3)),
        ]
    );
    assert!(d
        .iter()
        .all(|(k, v)| k.as_str().is_some() && v.as_i64().is_some()));
}

#[test]
fn geneformer_v2_gene_medians() {
    let Some(d) = geneformer("v2/gene_median_dictionary_gc104M.pkl") else {
        return;
    };
    assert_eq!(d.len(), 42_005);
    for (k, v) in &d {
        assert!(k.as_str().unwrap().starts_with("ENSG"), "{k:?}");
        match v {
            Value::Float(f) => assert!(*f > 0.0, "{k:?} -> {f}"),
            other => panic!("{k:?} -> {other:?}"),
        }
    }
    // First entry, bit-exact (checked against Python's pickle).
    assert_eq!(d[0].0, s("ENSG00000121410"));
    assert_eq!(d[0].1, Value::Float(1.7629378614450941));
}

#[test]
fn geneformer_v1_token_dictionary() {
    let Some(d) = geneformer("v1/token_dictionary_gc30M.pkl") else {
        return;
    };
    assert_eq!(d.len(), 25_426);
    assert_eq!(d[0], (s("<pad>"), Value::Int(0)));
    assert_eq!(d[1], (s("<mask>"), Value::Int(1)));
    assert_eq!(d[2], (s("ENSG00000000003"), Value::Int(2)));
    let mut ids: Vec<i64> = d.iter().map(|(_, v)| v.as_i64().unwrap()).collect();
    ids.sort_unstable();
    assert!(ids.iter().copied().eq(0..25_426));
}

#[test]
fn geneformer_v1_ensembl_mapping_protocol5() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/geneformer/v1/ensembl_mapping_dict_gc30M.pkl"
    );
    if let Ok(bytes) = std::fs::read(path) {
        assert_eq!(&bytes[..2], &[0x80, 5]);
    }
    let Some(d) = geneformer("v1/ensembl_mapping_dict_gc30M.pkl") else {
        return;
    };
    assert_eq!(d.len(), 25_424);
    assert!(d.iter().all(|(k, v)| k.as_str().is_some() && k == v));
}

#[test]
fn geneformer_v2_gene_names() {
    let Some(d) = geneformer("v2/gene_name_id_dict_gc104M.pkl") else {
        return;
    };
    assert_eq!(d.len(), 63_675);
    assert!(d
        .iter()
        .all(|(k, v)| k.as_str().is_some() && v.as_str().is_some_and(|v| v.starts_with("ENSG"))));
}

// ---- the flat-dictionary fast path -------------------------------------------------------

/// `load_flat_dict` as a map (later entries win), for comparison with `load_dict`.
fn flat_map(bytes: &[u8]) -> Option<HashMap<String, Value>> {
    load_flat_dict(bytes).map(|items| items.into_iter().collect())
}

fn vm_map(bytes: &[u8]) -> HashMap<String, Value> {
    load_dict(bytes)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v))
        .collect()
}

#[test]
fn the_flat_dict_fast_path_equals_the_vm_on_every_real_dictionary() {
    let mut taken = 0;
    for version in ["v1", "v2"] {
        let Some(dir) = crate::test_data::shared_data(&format!("geneformer/{version}")) else {
            return;
        };
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            // The fast path either declines (numpy scalars: the medians, V1 tokens) or agrees.
            if let Some(fast) = flat_map(&bytes) {
                assert_eq!(fast, vm_map(&bytes), "{}", path.display());
                taken += 1;
            }
            // Every truncation is declined, never a panic.
            for cut in [0, 1, 2, 11, 12, bytes.len() / 3, bytes.len() - 2, bytes.len() - 1] {
                assert!(
                    load_flat_dict(&bytes[..cut]).is_none(),
                    "{} cut {cut}",
                    path.display()
                );
            }
        }
    }
    assert!(
        taken >= 5,
        "the string dictionaries and the V2 tokens take the fast path ({taken})"
    );
}

#[test]
fn the_float_scalar_fast_path_equals_the_vm_on_every_real_dictionary() {
    let mut taken = 0;
    for version in ["v1", "v2"] {
        let Some(dir) = crate::test_data::shared_data(&format!("geneformer/{version}")) else {
            return;
        };
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            // Declined (the string dictionaries, V1's int16 tokens) or equal to the VM, bit for bit,
            // in the same order.
            if let Some(fast) = f64_scalar_dict_entries(&bytes) {
                let vm = load_dict(&bytes).unwrap();
                assert_eq!(fast.len(), vm.len(), "{}", path.display());
                for ((k, v), (vk, vv)) in fast.iter().zip(&vm) {
                    assert_eq!(Some(*k), vk.as_str(), "{}", path.display());
                    assert_eq!(
                        Some(v.to_bits()),
                        vv.as_f64().map(f64::to_bits),
                        "{}",
                        path.display()
                    );
                }
                taken += 1;
            }
            for cut in [0, 1, 2, 11, 12, bytes.len() / 3, bytes.len() - 2, bytes.len() - 1] {
                assert!(
                    f64_scalar_dict_entries(&bytes[..cut]).is_none(),
                    "{} cut {cut}",
                    path.display()
                );
            }
        }
    }
    assert_eq!(taken, 2, "the V1 and V2 medians take the fast path");
}

#[test]
fn the_float_scalar_fast_path_declines_other_dtypes_and_byte_orders() {
    // One entry {'a': scalar(dtype(spec) with BUILD byte order `order`, raw)}.
    let scalar_dict = |spec: &str, order: &str, raw: &[u8]| {
        P::proto(4)
            .op(op::EMPTY_DICT)
            .short_uni("a")
            .short_uni("numpy.core.multiarray")
            .short_uni("scalar")
            .op(op::STACK_GLOBAL)
            .short_uni("numpy")
            .short_uni("dtype")
            .op(op::STACK_GLOBAL)
            .short_uni(spec)
            .op(op::NEWFALSE)
            .op(op::NEWTRUE)
            .op(op::TUPLE3)
            .op(op::REDUCE)
            .op(op::MARK)
            .int1(3)
            .short_uni(order)
            .op(op::NONE)
            .op(op::NONE)
            .op(op::NONE)
            .op(op::BININT)
            .raw(&(-1i32).to_le_bytes())
            .op(op::BININT)
            .raw(&(-1i32).to_le_bytes())
            .int1(0)
            .op(op::TUPLE)
            .op(op::BUILD)
            .op(op::SHORT_BINBYTES)
            .raw(&[raw.len() as u8])
            .raw(raw)
            .op(op::TUPLE2)
            .op(op::REDUCE)
            .op(op::SETITEM)
            .stop()
    };
    let ok = scalar_dict("f8", "<", &2.25f64.to_le_bytes());
    assert_eq!(f64_scalar_dict_entries(&ok), Some(vec![("a", 2.25)]));
    assert_eq!(load_dict(&ok).unwrap()[0].1.as_f64(), Some(2.25));
    for bad in [
        scalar_dict("f8", ">", &2.25f64.to_be_bytes()),
        scalar_dict(">f8", "<", &2.25f64.to_be_bytes()),
        scalar_dict("f4", "<", &2.25f32.to_le_bytes()),
        scalar_dict("i2", "<", &3i16.to_le_bytes()),
        scalar_dict("f8", "<", &[0; 4]),
    ] {
        assert!(f64_scalar_dict_entries(&bad).is_none());
    }
}

#[test]
fn the_flat_dict_fast_path_declines_what_it_does_not_know() {
    // {'a': 'x', 'b': 1, 'a': <memo 'x'>} with BINPUT / BINGET, protocol 2: later 'a' wins.
    let p: &[u8] =
        b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01X\x01\x00\x00\x00xq\x02X\x01\x00\x00\x00bK\x01h\x01h\x02u.";
    let fast = flat_map(p).unwrap();
    assert_eq!(fast, vm_map(p));
    assert_eq!(fast["a"], s("x"));
    assert_eq!(fast["b"], Value::Int(1));
    // A float value, a nested list, a global, bytes after STOP, a memo hole: all declined.
    for bad in [
        &b"\x80\x02}(X\x01\x00\x00\x00aG?\xf0\x00\x00\x00\x00\x00\x00u."[..],
        b"\x80\x02}(X\x01\x00\x00\x00a]u.",
        b"\x80\x02cos\nsystem\n.",
        b"\x80\x02}.extra",
        b"\x80\x02}q\x05.",
        b"\x80\x02}(h\x00X\x01\x00\x00\x00au.",
    ] {
        assert!(load_flat_dict(bad).is_none(), "{bad:?}");
    }
    // A memo reference repeated beyond the copy budget is declined (the VM then refuses it).
    let mut big = b"\x80\x04}\x94(\x8d".to_vec();
    big.extend_from_slice(&(1000u64).to_le_bytes());
    big.extend(std::iter::repeat_n(b'z', 1000));
    big.push(0x94);
    for i in 0..20_000u32 {
        big.push(op::SHORT_BINUNICODE);
        let k = i.to_string();
        big.push(k.len() as u8);
        big.extend_from_slice(k.as_bytes());
        big.extend_from_slice(&[op::BINGET, 1]);
    }
    big.extend_from_slice(b"u.");
    assert!(load_flat_dict(&big).is_none());
}
