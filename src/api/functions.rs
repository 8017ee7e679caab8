//! Small stateless SQL functions.

use pgrx::prelude::*;
use pgrx::JsonB;

use causal_core::HashAlgorithm;

use crate::error::OrReport;

/// The extension's version, as built.
#[pg_extern(immutable, parallel_safe)]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The B64Hash of the canonical JSON form of `value`, with `algorithm` `blake3` (default) or
/// `sha-256`.
#[pg_extern(immutable, parallel_safe, strict)]
fn hash(value: JsonB, algorithm: default!(&str, "'blake3'")) -> String {
    let alg = HashAlgorithm::parse(algorithm).or_report("causal.hash");
    alg.hash_literal(&value.0).or_report("causal.hash").to_b64()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_matches_the_crate() {
        let v = Spi::get_one::<String>("SELECT causal.version()").unwrap().unwrap();
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
    }

    #[pg_test]
    fn functions_live_in_the_causal_schema() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'causal' AND p.proname IN ('version', 'hash')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, 2);
    }

    #[pg_test]
    fn hash_matches_the_reference_vectors() {
        // Values from the conformance vectors (computed by the reference implementation).
        let blake3 = Spi::get_one::<String>(r#"SELECT causal.hash('true'::jsonb)"#).unwrap().unwrap();
        assert_eq!(blake3, "rMinaZor9MvQX2lnjqxPwjZXIEHCjf0KtVjl/PKrZUA=");
        let sha = Spi::get_one::<String>(r#"SELECT causal.hash('true'::jsonb, 'sha-256')"#).unwrap().unwrap();
        assert_eq!(sha, "tb6kG2xiP3wJ8b8k3K5Y66s8DN2QrZZrxDpFtEhn4Ss=");
    }

    #[pg_test]
    fn hash_is_independent_of_key_order_and_whitespace() {
        let a = Spi::get_one::<String>(r#"SELECT causal.hash('{"b": 1, "a": [1, 2.50]}'::jsonb)"#).unwrap();
        let b = Spi::get_one::<String>(r#"SELECT causal.hash('{"a":[1,2.5],"b":1}'::jsonb)"#).unwrap();
        assert_eq!(a, b);
    }

    #[pg_test]
    fn hash_of_null_input_is_null() {
        let v = Spi::get_one::<String>("SELECT causal.hash(NULL::jsonb)").unwrap();
        assert_eq!(v, None);
    }

    #[pg_test(error = "unknown hash algorithm \"md5\": the supported algorithms are \"blake3\" and \"sha-256\"")]
    fn hash_rejects_unknown_algorithms() {
        Spi::run("SELECT causal.hash('1'::jsonb, 'md5')").unwrap();
    }

    #[pg_test(
        error = "value has no canonical form: the number 100000000000000000000000... (401 characters) at the top level is not finite"
    )]
    fn hash_rejects_non_finite_numbers() {
        Spi::run("SELECT causal.hash('1e400'::jsonb)").unwrap();
    }

    #[pg_test(error = "value has no canonical form: null is not a valid literal (at $.a)")]
    fn hash_rejects_null_members() {
        Spi::run(r#"SELECT causal.hash('{"a": null}'::jsonb)"#).unwrap();
    }

    /// The SQLSTATE is 22023 (invalid_parameter_value) for both kinds of bad input.
    #[pg_test]
    fn hash_errors_carry_sqlstate_22023() {
        Spi::run(
            r#"
            DO $$
            DECLARE s1 text; s2 text;
            BEGIN
                BEGIN PERFORM causal.hash('1'::jsonb, 'md5'); EXCEPTION WHEN OTHERS THEN s1 := SQLSTATE; END;
                BEGIN PERFORM causal.hash('1e400'::jsonb); EXCEPTION WHEN OTHERS THEN s2 := SQLSTATE; END;
                PERFORM set_config('causal_test.states', s1 || ',' || s2, false);
            END $$;
            "#,
        )
        .unwrap();
        let states = Spi::get_one::<String>("SELECT current_setting('causal_test.states')").unwrap().unwrap();
        assert_eq!(states, "22023,22023");
    }
}
