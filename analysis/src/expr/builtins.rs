//! The functions a condition may call: Argo's environment (`asInt`, `asFloat`, `isNaN`, `isInf`,
//! `isNil`, `default`) plus the expr-lang built-ins that templates use.

#[derive(Clone, Copy, Debug)]
pub(super) enum Arity {
    Exactly(usize),
    AtLeast(usize),
    Between(usize, usize),
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Builtin {
    pub name: &'static str,
    pub arity: Arity,
    /// The second argument is a predicate over `#` (`all(list, {# > 0})`).
    pub predicate: bool,
}

const fn f(name: &'static str, arity: Arity) -> Builtin {
    Builtin {
        name,
        arity,
        predicate: false,
    }
}

const fn p(name: &'static str) -> Builtin {
    Builtin {
        name,
        arity: Arity::Exactly(2),
        predicate: true,
    }
}

pub(super) const BUILTINS: &[Builtin] = &[
    // Argo's environment (utils/evaluate/evaluate.go).
    f("asInt", Arity::Exactly(1)),
    f("asFloat", Arity::Exactly(1)),
    f("isNaN", Arity::Exactly(1)),
    f("isInf", Arity::Exactly(1)),
    f("isNil", Arity::Exactly(1)),
    f("default", Arity::Exactly(2)),
    // expr-lang built-ins.
    f("len", Arity::Exactly(1)),
    p("all"),
    p("any"),
    p("none"),
    p("one"),
    p("filter"),
    p("map"),
    p("count"),
    f("sum", Arity::Exactly(1)),
    f("mean", Arity::Exactly(1)),
    f("min", Arity::AtLeast(1)),
    f("max", Arity::AtLeast(1)),
    f("abs", Arity::Exactly(1)),
    f("ceil", Arity::Exactly(1)),
    f("floor", Arity::Exactly(1)),
    f("round", Arity::Exactly(1)),
    f("first", Arity::Exactly(1)),
    f("last", Arity::Exactly(1)),
    f("int", Arity::Exactly(1)),
    f("float", Arity::Exactly(1)),
    f("string", Arity::Exactly(1)),
    f("lower", Arity::Exactly(1)),
    f("upper", Arity::Exactly(1)),
    f("trim", Arity::Between(1, 2)),
    f("keys", Arity::Exactly(1)),
    f("values", Arity::Exactly(1)),
];

pub(super) fn lookup(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}
