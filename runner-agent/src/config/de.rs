//! Deserialization helpers that keep every error at the node it concerns.
//!
//! serde_yaml fills in an error's line and column only when the error is raised *inside*
//! one of its `deserialize_*` calls: it then stamps the mark of the node being read. An
//! error raised after that call returned (as `#[serde(try_from)]` does) is stamped later,
//! by the enclosing node, and so points at the parent (for a list item: the start of the
//! list). The helpers here therefore run every check inside the visitor:
//!
//! - [`scalar`] reads any scalar as its source text and parses it with a
//!   [`ScalarForm`]: the error lands on the scalar (value or mapping key).
//! - [`checked_map`] deserializes a raw struct from inside `visit_map` and converts it with
//!   `TryFrom`: the error lands on the mapping.
//! - [`unique_map`] reads a mapping whose keys are validated scalars and rejects duplicate
//!   keys (YAML 1.2 §3.2.1.1 requires keys to be unique; serde_yaml keeps the last one).
//! - [`NonEmpty`] reads a list that must have at least one item; the error lands on the
//!   list.
//! - [`EnvValue`] accepts strings, numbers and booleans as text, like GitHub Actions.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A value written as one YAML scalar and parsed from its text.
pub(crate) trait ScalarForm: Sized {
    /// What the user should write, for type errors ("a size like 4GiB").
    const EXPECTING: &'static str;
    /// Parses the scalar's text; the error is the message shown after the location.
    fn parse(text: &str) -> Result<Self, String>;
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<T: ScalarForm> Visitor<'_> for ScalarVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        T::parse(text).map_err(E::custom)
    }
}

/// Deserializes a [`ScalarForm`] from a scalar's text (serde_yaml hands numbers and
/// booleans to `deserialize_str` as their source text, so `30` reaches the parser as "30").
pub(crate) fn scalar<'de, D: Deserializer<'de>, T: ScalarForm>(d: D) -> Result<T, D::Error> {
    d.deserialize_str(ScalarVisitor(PhantomData))
}

/// Implements `Deserialize` for [`ScalarForm`] types through [`scalar`].
macro_rules! scalar_deserialize {
    ($($ty:ty),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::config::de::scalar(d)
            }
        }
    )*};
}
pub(crate) use scalar_deserialize;

/// Shared with the proxy's policy file, whose rules need the same error placement.
pub(crate) use egress_proxy::yaml::checked_map;

struct UniqueMapVisitor<K, V>(&'static str, PhantomData<(K, V)>);

impl<'de, K, V> Visitor<'de> for UniqueMapVisitor<K, V>
where
    K: Deserialize<'de> + Into<String>,
    V: Deserialize<'de>,
{
    type Value = BTreeMap<String, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<K>()? {
            let key: String = key.into();
            let value = map.next_value::<V>()?;
            if out.insert(key.clone(), value).is_some() {
                return Err(de::Error::custom(format!(
                    "`{key}` appears twice in this mapping; each key may appear once"
                )));
            }
        }
        Ok(out)
    }
}

/// Deserializes a mapping with keys validated by `K` into a map keyed by their text.
pub(crate) fn unique_map<'de, D, K, V>(
    d: D,
    expecting: &'static str,
) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Into<String>,
    V: Deserialize<'de>,
{
    d.deserialize_map(UniqueMapVisitor::<K, V>(expecting, PhantomData))
}

/// The message for an empty list of a [`NonEmpty`] kind.
pub(crate) trait EmptyHint {
    /// Shown at the empty list.
    const HINT: &'static str;
}

/// A list with at least one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NonEmpty<T, H>(pub Vec<T>, PhantomData<H>);

struct NonEmptyVisitor<T, H>(PhantomData<(T, H)>);

impl<'de, T: Deserialize<'de>, H: EmptyHint> Visitor<'de> for NonEmptyVisitor<T, H> {
    type Value = NonEmpty<T, H>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a non-empty list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<T>()? {
            items.push(item);
        }
        if items.is_empty() {
            return Err(de::Error::custom(H::HINT));
        }
        Ok(NonEmpty(items, PhantomData))
    }
}

impl<'de, T: Deserialize<'de>, H: EmptyHint> Deserialize<'de> for NonEmpty<T, H> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(NonEmptyVisitor(PhantomData))
    }
}

/// An environment variable value: a string, or a number or boolean taken as its text
/// (GitHub Actions does the same, so `PYTHON: 3.10` becomes "3.1"; quote it to keep it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvValue(pub String);

impl From<EnvValue> for String {
    fn from(value: EnvValue) -> String {
        value.0
    }
}

struct EnvValueVisitor;

impl Visitor<'_> for EnvValueVisitor {
    type Value = EnvValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
        // execve(2) takes NUL-terminated strings: a NUL would silently cut the value.
        if v.contains('\0') {
            return Err(E::custom(
                "an environment value cannot contain a NUL character",
            ));
        }
        Ok(EnvValue(v.to_owned()))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
        Ok(EnvValue(v.to_string()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<EnvValue, E> {
        Err(E::custom(
            "an environment value is missing; write \"\" for an empty value",
        ))
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvValueVisitor)
    }
}
