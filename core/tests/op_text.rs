//! Property test: payloads signed from operation texts ([`causal_core::op_text`]) are the
//! payloads the operation values give: the same canonical text (so the same payload hash and
//! signature), and a stored text that parses to the same value and decodes to the same
//! operations. Column names, strings (control characters and characters beyond the BMP
//! included), numbers, booleans and NULLs are drawn at random, as are entry sizes around the
//! 10-element point where canonical arrays start to be permuted.

use causal_core::json::{canonical_string, parse};
use causal_core::op_text::{sign_op_texts, InsertWriter, OpText};
use causal_core::payload::{Op, SignedPayload};
use causal_core::{HashAlgorithm, Position};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Map, Value};

const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/op_text.txt");

fn cases() -> u32 {
    std::env::var("CAUSAL_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

fn value() -> impl Strategy<Value = Option<Value>> {
    // Mostly values whose canonical text is plain JSON, so whole payloads of them occur too.
    prop_oneof![
        2 => Just(None),
        4 => any::<i32>().prop_map(|i| Some(json!(i))),
        2 => any::<bool>().prop_map(|b| Some(json!(b))),
        4 => "[a-z \\\\\"é\u{e000}\u{ffff}🎉]{0,12}".prop_map(|s| Some(json!(s))),
        1 => "[a-z\u{0}-\u{1f}]{1,4}".prop_map(|s| Some(json!(s))),
        1 => (-1.0e30f64..1.0e30).prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number)),
        // Doubles that ECMAScript and serde_json write differently.
        1 => prop::sample::select(vec![5.0, -0.0, 1.5e17, 1e20, 1e21, 1e-7, 0.1])
            .prop_map(|f| serde_json::Number::from_f64(f).map(Value::Number)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![9 => "[a-z_\u{e9}\u{ffff}\u{1f389}]{1,6}", 1 => "[a-z\n]{1,3}"]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn text_payloads_equal_value_payloads(
        table in name(),
        columns in prop::collection::btree_set(name(), 1..6),
        rows in prop::collection::vec(prop::collection::vec(value(), 6), 1..14),
        delete_at in prop::option::of(0usize..14),
        plain_only in any::<bool>(),
    ) {
        // Half the cases hold only values whose canonical text is ordinary JSON (integers,
        // booleans, strings without control characters), so long all-plain entries occur.
        let plain = |v: &Option<Value>| match v {
            Some(Value::Number(n)) => n.is_i64(),
            Some(Value::String(s)) => !s.chars().any(char::is_control),
            _ => true,
        };
        let rows: Vec<Vec<Option<Value>>> = rows
            .into_iter()
            .map(|r| r.into_iter().map(|v| if !plain_only || plain(&v) { v } else { None }).collect())
            .collect();
        let columns: Vec<String> = if plain_only {
            columns.into_iter().filter(|c| !c.contains('\n')).collect()
        } else {
            columns.into_iter().collect()
        };
        prop_assume!(!columns.is_empty());
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        let writer = InsertWriter::new(&table, &columns);
        let (mut texts, mut ops) = (Vec::new(), Vec::new());
        for (i, values) in rows.iter().enumerate() {
            let values = &values[..columns.len()];
            if delete_at == Some(i) {
                let key: Map<String, Value> = [(columns[0].to_string(), json!(i))].into_iter().collect();
                let op = Op::Delete { table: table.clone(), key };
                texts.push(OpText::from_op(&op).unwrap());
                ops.push(op);
            }
            let row: Map<String, Value> = columns
                .iter()
                .zip(values)
                .filter_map(|(c, v)| v.clone().map(|v| (c.to_string(), v)))
                .collect();
            let op = Op::Insert { table: table.clone(), row };
            let text = writer.write(values).unwrap();
            prop_assert_eq!(text.canonical(), canonical_string(&op.to_value()).unwrap());
            prop_assert_eq!(parse(text.stored()).unwrap(), op.to_value());
            texts.push(text);
            ops.push(op);
        }
        let kp = causal_core::identity::Keypair::generate();
        let group = causal_core::GroupId(HashAlgorithm::Blake3.digest(table.as_bytes()));
        let prev: Position = [causal_core::EntryHash(HashAlgorithm::Sha256.digest(b"prev"))].into_iter().collect();
        let signed = sign_op_texts(&kp, &group, &texts, &prev).unwrap();
        let encoded = SignedPayload::sign_encoded(&kp, &group, ops, &prev).unwrap();
        prop_assert_eq!(&signed.canonical, &encoded.canonical);
        let stored = parse(&signed.stored).unwrap();
        prop_assert_eq!(&stored, &encoded.value);
        prop_assert_eq!(SignedPayload::from_value(&stored).unwrap(), encoded.payload);
    }
}
