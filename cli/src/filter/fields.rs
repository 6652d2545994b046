//! The fields a filter may name, what each holds, and the operators that apply.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Match,
    NotMatch,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

impl Op {
    pub(super) fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Match => "~",
            Op::NotMatch => "!~",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "in",
            Op::NotIn => "not in",
        }
    }

    /// The positive operator this one negates, if any (`!=` is `not =`).
    pub(super) fn positive(self) -> (Op, bool) {
        match self {
            Op::Ne => (Op::Eq, true),
            Op::NotMatch => (Op::Match, true),
            Op::NotIn => (Op::In, true),
            op => (op, false),
        }
    }

    /// `a op b` as `b op' a`: what a comparison of ages means for timestamps.
    pub(super) fn flipped(self) -> &'static str {
        match self {
            Op::Lt => ">",
            Op::Le => ">=",
            Op::Gt => "<",
            Op::Ge => "<=",
            op => op.symbol(),
        }
    }
}

/// What a field holds, which decides its operators and values.
#[derive(Debug)]
pub(super) enum Kind {
    /// Free text.
    Text,
    /// A uuid.
    Id,
    /// One of a PostgreSQL enum's labels.
    Enum {
        sql_type: &'static str,
        labels: &'static [&'static str],
    },
    /// The scopes array.
    Scope,
    /// A timestamp in the past (created, last used) or the future (expires); NULL
    /// means never.
    Time { future: bool, nullable: bool },
}

#[derive(Debug)]
pub struct Field {
    pub(super) names: &'static [&'static str],
    pub(super) column: &'static str,
    pub(super) kind: Kind,
}

pub(super) const FIELDS: &[Field] = &[
    Field {
        names: &["id"],
        column: "l.id",
        kind: Kind::Id,
    },
    Field {
        names: &["prefix"],
        column: "l.prefix",
        kind: Kind::Text,
    },
    Field {
        names: &["name"],
        column: "l.name",
        kind: Kind::Text,
    },
    Field {
        names: &["description"],
        column: "l.description",
        kind: Kind::Text,
    },
    Field {
        names: &["owner"],
        column: "l.owner",
        kind: Kind::Text,
    },
    Field {
        names: &["type", "key_type"],
        column: "l.key_type",
        kind: Kind::Enum {
            sql_type: "api_keys.key_type",
            labels: &["service", "user"],
        },
    },
    Field {
        names: &["env", "environment"],
        column: "l.environment",
        kind: Kind::Enum {
            sql_type: "api_keys.environment",
            labels: &["production", "staging", "development"],
        },
    },
    Field {
        names: &["status"],
        column: "l.status",
        kind: Kind::Enum {
            sql_type: "api_keys.key_status",
            labels: &["active", "suspended", "revoked", "expired"],
        },
    },
    Field {
        names: &["scope", "scopes", "permission", "permissions"],
        column: "l.scopes",
        kind: Kind::Scope,
    },
    Field {
        names: &["created", "created_at"],
        column: "l.created_at",
        kind: Kind::Time {
            future: false,
            nullable: false,
        },
    },
    Field {
        names: &["last_used", "last_used_at"],
        column: "l.last_used_at",
        kind: Kind::Time {
            future: false,
            nullable: true,
        },
    },
    Field {
        names: &["expires", "expires_at"],
        column: "l.expires_at",
        kind: Kind::Time {
            future: true,
            nullable: true,
        },
    },
];

pub(super) fn field_names() -> String {
    FIELDS
        .iter()
        .map(|f| f.names[0])
        .collect::<Vec<_>>()
        .join(", ")
}

impl Field {
    pub(super) fn name(&self) -> &'static str {
        self.names[0]
    }

    pub(super) fn operators(&self) -> &'static [Op] {
        match self.kind {
            Kind::Text | Kind::Scope => {
                &[Op::Eq, Op::Ne, Op::Match, Op::NotMatch, Op::In, Op::NotIn]
            }
            Kind::Id | Kind::Enum { .. } => &[Op::Eq, Op::Ne, Op::In, Op::NotIn],
            Kind::Time { .. } => &[Op::Lt, Op::Le, Op::Gt, Op::Ge, Op::Eq, Op::Ne],
        }
    }
}
