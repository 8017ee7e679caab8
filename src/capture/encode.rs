//! Encoding a replicated table's tuples as operations: the column values as the group's
//! entries spell them, and the insert, update or delete a change of one row is. Used by the
//! capture triggers (rule checks), by the sealer's decoder (tuples from the WAL) and when a
//! table that already holds rows joins a group.

use std::num::NonZeroUsize;

use pgrx::prelude::*;
use pgrx::{AnyNumeric, JsonB};
use serde_json::{json, Map, Value};

use causal_core::op_text::{Field, InsertWriter, OpText};
use causal_core::payload::Op;
use causal_core::schema::{format_date, format_timestamp, ColumnType, TableSchema};

use crate::error::CausalError;

/// What encoding needs of a replicated table: its schema, the attribute number of each schema
/// column (found on the first tuple) and a writer of its inserts as text.
pub struct Codec {
    pub schema: TableSchema,
    attnums: std::cell::OnceCell<Vec<NonZeroUsize>>,
    inserts: InsertWriter,
}

/// A change of one row, encoded (the form decoded commits are handed over in).
pub use causal_core::handoff::RowOp;

type Tuple<'a> = PgHeapTuple<'a, AllocatedByPostgres>;

impl Codec {
    pub fn new(schema: TableSchema) -> Codec {
        let columns: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        let inserts = InsertWriter::new(&schema.table, &columns);
        Codec { schema, attnums: std::cell::OnceCell::new(), inserts }
    }

    /// The attribute number of each schema column in `tuple`'s table, in schema order.
    fn attnums(&self, tuple: &Tuple<'_>) -> Result<&[NonZeroUsize], CausalError> {
        if let Some(a) = self.attnums.get() {
            return Ok(a);
        }
        let mut found = Vec::with_capacity(self.schema.columns.len());
        for c in &self.schema.columns {
            let (attno, _) = tuple.get_attribute_by_name(&c.name).ok_or_else(|| {
                CausalError::Corrupt(format!("column {} is not in table {}", c.name, self.schema.table))
            })?;
            found.push(attno);
        }
        Ok(self.attnums.get_or_init(|| found))
    }

    /// The insert of `tuple` as text, columns in schema order.
    pub fn insert_text(&self, tuple: &Tuple<'_>) -> Result<OpText, CausalError> {
        let attnums = self.attnums(tuple)?;
        let mut fields = Vec::with_capacity(attnums.len());
        for (c, attno) in self.schema.columns.iter().zip(attnums) {
            let bad = |e: pgrx::datum::TryFromDatumError| CausalError::Corrupt(format!("column {}: {e}", c.name));
            let field = match c.ty {
                ColumnType::Text | ColumnType::Varchar(_) => {
                    tuple.get_by_index::<&str>(*attno).map_err(bad)?.map(Field::Str)
                }
                ColumnType::Int2 => tuple.get_by_index::<i16>(*attno).map_err(bad)?.map(|v| Field::Int(v.into())),
                ColumnType::Int4 => tuple.get_by_index::<i32>(*attno).map_err(bad)?.map(|v| Field::Int(v.into())),
                ColumnType::Bool => tuple.get_by_index::<bool>(*attno).map_err(bad)?.map(Field::Bool),
                _ => encode_column(tuple, *attno, &c.name, &c.ty)?.map(Field::Value),
            };
            fields.push(field.unwrap_or(Field::Null));
        }
        Ok(self.inserts.write_fields(&fields)?)
    }

    /// The row `tuple` holds, by column name (NULL columns left out). A column whose value
    /// the tuple does not carry (an unchanged value stored out of line, in an update decoded
    /// from the WAL) is taken from `unchanged`'s old row.
    pub fn row(&self, tuple: &Tuple<'_>, unchanged: Option<&Unchanged<'_>>) -> Result<Map<String, Value>, CausalError> {
        let attnums = self.attnums(tuple)?;
        let mut row = Map::new();
        for (c, attno) in self.schema.columns.iter().zip(attnums) {
            if let Some(old) = unchanged.filter(|u| u.is_unchanged_toast(*attno)).map(|u| u.old) {
                if let Some(v) = old.get(&c.name) {
                    row.insert(c.name.clone(), v.clone());
                }
                continue;
            }
            if let Some(v) = encode_column(tuple, *attno, &c.name, &c.ty)? {
                row.insert(c.name.clone(), v);
            }
        }
        Ok(row)
    }

    pub fn key_of(&self, row: &Map<String, Value>) -> Map<String, Value> {
        self.schema.primary_key.iter().filter_map(|k| row.get(k).map(|v| (k.clone(), v.clone()))).collect()
    }

    /// The operations an update of a row from `old` to `new` is: the changed and the cleared
    /// columns, or, when the primary key changed, a delete of the old row and an insert of the
    /// new one (a different row). None when nothing changed.
    pub fn update_ops(&self, old: Map<String, Value>, new: Map<String, Value>) -> Vec<RowOp> {
        let table = self.schema.table.clone();
        let (old_key, new_key) = (self.key_of(&old), self.key_of(&new));
        if old_key != new_key {
            return vec![
                RowOp::Decoded(Op::Delete { table: table.clone(), key: old_key }),
                RowOp::Decoded(Op::Insert { table, row: new }),
            ];
        }
        let set: Map<String, Value> =
            new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let unset: Vec<String> = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
        if set.is_empty() && unset.is_empty() {
            return Vec::new();
        }
        vec![RowOp::Decoded(Op::Update { table, key: new_key, set, unset })]
    }

    pub fn delete_op(&self, old: &Map<String, Value>) -> RowOp {
        RowOp::Decoded(Op::Delete { table: self.schema.table.clone(), key: self.key_of(old) })
    }
}

/// The new tuple of an update decoded from the WAL, with the row before it: a TOASTed value
/// the update left unchanged is not in the record, only a pointer to where it is stored.
pub struct Unchanged<'a> {
    pub old: &'a Map<String, Value>,
    pub tuple: pg_sys::HeapTuple,
    pub desc: pg_sys::TupleDesc,
}

impl Unchanged<'_> {
    /// Whether the column `attno` of the new tuple is a pointer to a value stored on disk.
    fn is_unchanged_toast(&self, attno: NonZeroUsize) -> bool {
        // SAFETY: the tuple and its descriptor are valid while the change is decoded; the
        // attribute number is one of the descriptor's. The datum of a varlena column points
        // at its header, whose first two bytes say whether it is an on-disk external pointer
        // (VARATT_IS_1B_E and VARTAG_ONDISK, on a little-endian machine).
        unsafe {
            let attr = (*self.desc).attrs.as_ptr().add(attno.get() - 1);
            if (*attr).attlen != -1 {
                return false;
            }
            let Some(datum) = pgrx::heap_getattr_raw(self.tuple, attno, self.desc) else { return false };
            let p = datum.cast_mut_ptr::<u8>();
            cfg!(target_endian = "little") && *p == 0x01 && *p.add(1) == pg_sys::vartag_external::VARTAG_ONDISK as u8
        }
    }
}

fn float(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        serde_json::Number::from_f64(v).map_or(json!("NaN"), Value::Number)
    }
}

/// Encodes one column of a tuple; `None` for NULL.
fn encode_column(
    tuple: &Tuple<'_>,
    attno: NonZeroUsize,
    name: &str,
    ty: &ColumnType,
) -> Result<Option<Value>, CausalError> {
    let bad = |e: pgrx::datum::TryFromDatumError| CausalError::Corrupt(format!("column {name}: {e}"));
    Ok(match ty {
        ColumnType::Text | ColumnType::Varchar(_) => {
            tuple.get_by_index::<String>(attno).map_err(bad)?.map(Value::String)
        }
        ColumnType::Int2 => tuple.get_by_index::<i16>(attno).map_err(bad)?.map(|v| json!(v)),
        ColumnType::Int4 => tuple.get_by_index::<i32>(attno).map_err(bad)?.map(|v| json!(v)),
        ColumnType::Int8 => tuple.get_by_index::<i64>(attno).map_err(bad)?.map(|v| json!(v.to_string())),
        ColumnType::Numeric { .. } => {
            tuple.get_by_index::<AnyNumeric>(attno).map_err(bad)?.map(|v| json!(v.to_string()))
        }
        ColumnType::Float8 => tuple.get_by_index::<f64>(attno).map_err(bad)?.map(float),
        ColumnType::Float4 => tuple.get_by_index::<f32>(attno).map_err(bad)?.map(|v| float(f64::from(v))),
        ColumnType::Bool => tuple.get_by_index::<bool>(attno).map_err(bad)?.map(Value::Bool),
        ColumnType::Date => tuple.get_by_index::<pgrx::datum::Date>(attno).map_err(bad)?.map(|d| {
            if d.is_infinity() {
                json!("infinity")
            } else if d.is_neg_infinity() {
                json!("-infinity")
            } else {
                json!(format_date(d.to_pg_epoch_days()))
            }
        }),
        ColumnType::Timestamp => tuple.get_by_index::<pgrx::datum::Timestamp>(attno).map_err(bad)?.map(|t| {
            if t.is_infinity() {
                json!("infinity")
            } else if t.is_neg_infinity() {
                json!("-infinity")
            } else {
                json!(format_timestamp(t.into_inner(), false))
            }
        }),
        ColumnType::Timestamptz => {
            tuple.get_by_index::<pgrx::datum::TimestampWithTimeZone>(attno).map_err(bad)?.map(|t| {
                if t.is_infinity() {
                    json!("infinity")
                } else if t.is_neg_infinity() {
                    json!("-infinity")
                } else {
                    json!(format_timestamp(t.into_inner(), true))
                }
            })
        }
        ColumnType::Uuid => tuple.get_by_index::<pgrx::datum::Uuid>(attno).map_err(bad)?.map(|u| {
            let b = u.as_bytes();
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            json!(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
        }),
        ColumnType::Bytea => tuple
            .get_by_index::<&[u8]>(attno)
            .map_err(bad)?
            .map(|b| json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b))),
        ColumnType::Jsonb => match tuple.get_by_index::<JsonB>(attno).map_err(bad)? {
            Some(j) => Some(json!(serde_json::to_string(&j.0)
                .map_err(|e| CausalError::Corrupt(format!("column {name}: jsonb not serializable: {e}")))?)),
            None => None,
        },
    })
}
