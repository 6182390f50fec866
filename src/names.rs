//! Enums whose variants have names on the wire, in flags or in metrics: one table per enum.
//!
//! Each name was once written twice or three times (an `as_str` match, a serde rename, a
//! parser's table), and nothing but care kept them in step. [`named_enum!`] takes the table
//! once and writes the enum, `ALL`, `NAMES`, `as_str`, `FromStr`, `Display` and serde (as the
//! name string) from it, so a name cannot be spelt differently in two places. A
//! `macro_rules!` rather than a derive crate: no proc-macro to build on a 2-core machine.
//! Pure; imports nothing of the crate, so every part may use it.

/// A name that is not one of an enum's: says what was read and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}` (expected {expected})")]
pub struct UnknownName {
    /// What the name was meant to be (the enum's name).
    pub what: &'static str,
    /// The text that was read.
    pub name: String,
    /// The names it could have been, comma separated.
    pub expected: String,
}

impl UnknownName {
    /// The error for `name`, which is none of `names`.
    pub fn new(what: &'static str, name: &str, names: &[&str]) -> UnknownName {
        UnknownName {
            what,
            name: name.to_string(),
            expected: names.join(", "),
        }
    }
}

/// Writes a fieldless enum from one table of `Variant = "name"` lines, and from it:
/// `ALL` (every variant, in table order), `NAMES` (their names), `as_str`, `FromStr` (exact
/// match; [`UnknownName`] otherwise), `Display` (the name) and serde `Serialize`/`Deserialize`
/// as the name string. Attributes on the enum (derives, docs) and on each variant (docs,
/// `#[default]`) are kept. The open form (`_ => Other`) reads any name and keeps an unknown one
/// as `Other(text)`, in serde too.
macro_rules! named_enum {
    // Both forms: shown and serialised as `as_str()` gives the name.
    (@written_as_its_name $name:ident) => {
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        #[allow(dead_code)] // not every enum needs every item the table gives
        impl $name {
            /// Every variant, in the table's order.
            pub const ALL: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];
            /// Every variant's name, in the same order as [`Self::ALL`].
            pub const NAMES: [&'static str; [$(stringify!($variant)),+].len()] = [$($wire),+];

            /// The name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire ),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::names::UnknownName;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $wire => Ok($name::$variant), )+
                    _ => Err($crate::names::UnknownName::new(stringify!($name), s, &Self::NAMES)),
                }
            }
        }

        $crate::names::named_enum!(@written_as_its_name $name);

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                name.parse().map_err(|_| {
                    <D::Error as ::serde::de::Error>::unknown_variant(&name, &Self::NAMES)
                })
            }
        }
    };

    // The open form: the names read from outside that AWS may add to. A name not in the table is
    // kept, as `$other(String)`, rather than refused: the reader decides what an unknown one
    // means. `parse` (and `FromStr`) therefore never fails; the text is trimmed first.
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
            _ => $other:ident $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A name not in the table, as it was read.
            $other(String),
        }

        #[allow(dead_code)] // not every enum needs every item the table gives
        impl $name {
            /// Every known variant, in the table's order.
            pub const KNOWN: [$name; [$(stringify!($variant)),+].len()] = [$($name::$variant),+];
            /// Every known variant's name, in the same order as [`Self::KNOWN`].
            pub const NAMES: [&'static str; [$(stringify!($variant)),+].len()] = [$($wire),+];

            /// Reads a name (surrounding white space ignored); one not in the table is kept.
            pub fn parse(text: &str) -> $name {
                match text.trim() {
                    $( $wire => $name::$variant, )+
                    other => $name::$other(other.to_string()),
                }
            }

            /// The name, as it was read for an unknown one.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $wire, )+
                    $name::$other(text) => text,
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::convert::Infallible;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok($name::parse(s))
            }
        }

        $crate::names::named_enum!(@written_as_its_name $name);

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                Ok($name::parse(&name))
            }
        }
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Colour {
            Red = "red",
            /// Documented.
            DarkBlue = "dark-blue",
        }
    }

    #[test]
    fn every_name_parses_back_and_serde_uses_the_same_names() {
        assert_eq!(Colour::ALL, [Colour::Red, Colour::DarkBlue]);
        for (c, name) in Colour::ALL.into_iter().zip(Colour::NAMES) {
            assert_eq!(c.as_str(), name);
            assert_eq!(c.to_string(), name);
            assert_eq!(name.parse::<Colour>(), Ok(c));
            let json = serde_json::to_string(&c).expect("serialises");
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<Colour>(&json).expect("reads back"),
                c
            );
        }
    }

    named_enum! {
        #[derive(Debug, Clone, PartialEq, Eq)]
        enum Open {
            One = "One",
            TwoThree = "Two:Three",
            _ => Other,
        }
    }

    #[test]
    fn the_open_form_keeps_an_unknown_name() {
        for (o, name) in Open::KNOWN.into_iter().zip(Open::NAMES) {
            assert_eq!(o.as_str(), name);
            assert_eq!(Open::parse(&format!(" {name}\n")), o);
        }
        assert_eq!(Open::parse("Four"), Open::Other("Four".to_string()));
        assert_eq!(Open::parse("Four").as_str(), "Four");
        assert_eq!("One".parse::<Open>(), Ok(Open::One));
        // serde: the name as text both ways, an unknown one kept.
        for o in [Open::One, Open::Other("Four".to_string())] {
            let json = serde_json::to_string(&o).expect("serializes");
            assert_eq!(json, format!("\"{}\"", o.as_str()));
            assert_eq!(
                serde_json::from_str::<Open>(&json).expect("deserializes"),
                o
            );
        }
    }

    #[test]
    fn an_unknown_name_says_what_was_expected() {
        let err = "Red".parse::<Colour>().expect_err("names are exact");
        assert_eq!(
            err.to_string(),
            "unknown Colour `Red` (expected red, dark-blue)"
        );
        let err = serde_json::from_str::<Colour>("\"green\"").expect_err("unknown");
        assert!(
            err.to_string()
                .contains("unknown variant `green`, expected `red` or `dark-blue`"),
            "{err}"
        );
        assert!(serde_json::from_str::<Colour>("3").is_err());
    }
}
