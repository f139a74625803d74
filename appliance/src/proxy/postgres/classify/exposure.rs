//! Columns a statement returns in a form column masking cannot follow:
//! transformed (inside a function, cast or operator) or as whole rows. The
//! guard denies these under `guardrails.deny_functions_on_masked`.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName,
    ObjectNamePart, SelectItem, TableFactor, TableWithJoins,
};

use super::walk::{fold, last_ident};

/// Most exposures kept per text; past it, one catch-all entry.
const MAX_EXPOSURES: usize = 256;

/// A column a statement returns computed from a stored value (inside a
/// function, cast or operator), or a whole row returned as one value
/// (`SELECT t FROM t`, `row_to_json(t.*)`): masking by column cannot see
/// through either.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Exposure {
    /// The relation as written (`[table]` or `[schema, table]`, aliases
    /// resolved within the same SELECT); empty when unknown.
    pub relation: Vec<String>,
    /// The column; `None` for a whole row.
    pub column: Option<String>,
}

/// The relations of one FROM list, by the names a column may be qualified
/// with (alias, or the table's own name when it has none).
#[derive(Default)]
pub(super) struct Scope {
    names: Vec<(String, Vec<String>)>,
}

impl Scope {
    pub(super) fn of(from: &[TableWithJoins]) -> Scope {
        let mut scope = Scope::default();
        let factors = from
            .iter()
            .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
        for f in factors {
            if let TableFactor::Table { name, alias, .. } = f {
                scope.add(name, alias.as_ref().map(|a| &a.name));
            }
        }
        scope
    }

    pub(super) fn single(name: &ObjectName, alias: Option<&Ident>) -> Scope {
        let mut scope = Scope::default();
        scope.add(name, alias);
        scope
    }

    fn add(&mut self, name: &ObjectName, alias: Option<&Ident>) {
        let relation: Vec<String> = name
            .0
            .iter()
            .filter_map(ObjectNamePart::as_ident)
            .map(fold)
            .collect();
        let key = match alias {
            Some(a) => fold(a),
            None => relation.last().cloned().unwrap_or_default(),
        };
        self.names.push((key, relation));
    }

    fn lookup(&self, qualifier: &str) -> Option<&Vec<String>> {
        self.names
            .iter()
            .find(|(k, _)| k == qualifier)
            .map(|(_, r)| r)
    }

    /// The relation of an unqualified column: known when there is only one.
    fn only(&self) -> Vec<String> {
        match self.names.as_slice() {
            [(_, r)] => r.clone(),
            _ => Vec::new(),
        }
    }
}

pub(super) fn projection_exposures(items: &[SelectItem], scope: &Scope, out: &mut Vec<Exposure>) {
    for item in items {
        let e = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => continue,
        };
        let mut plain = e;
        while let Expr::Nested(inner) = plain {
            plain = inner;
        }
        match plain {
            // A bare relation name is its whole row.
            Expr::Identifier(id) => {
                if let Some(r) = scope.lookup(&fold(id)) {
                    expose(
                        out,
                        Exposure {
                            relation: r.clone(),
                            column: None,
                        },
                    );
                }
                continue;
            }
            Expr::CompoundIdentifier(_) => continue,
            _ => {}
        }
        let _ = visit_expressions(e, |x| {
            match x {
                Expr::Identifier(id) => {
                    let name = fold(id);
                    let exposure = match scope.lookup(&name) {
                        Some(r) => Exposure {
                            relation: r.clone(),
                            column: None,
                        },
                        None => Exposure {
                            relation: scope.only(),
                            column: Some(name),
                        },
                    };
                    expose(out, exposure);
                }
                Expr::CompoundIdentifier(parts) => {
                    if let Some((column, qualifier)) = parts.split_last() {
                        let relation = match qualifier.last() {
                            Some(q) => scope
                                .lookup(&fold(q))
                                .cloned()
                                .unwrap_or_else(|| qualifier.iter().map(fold).collect()),
                            None => scope.only(),
                        };
                        expose(
                            out,
                            Exposure {
                                relation,
                                column: Some(fold(column)),
                            },
                        );
                    }
                }
                Expr::Function(f) => {
                    if let FunctionArguments::List(l) = &f.args {
                        for a in &l.args {
                            if let FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(q)) = a {
                                let q = last_ident(q).map(fold).unwrap_or_default();
                                let relation = scope.lookup(&q).cloned().unwrap_or_else(|| vec![q]);
                                expose(
                                    out,
                                    Exposure {
                                        relation,
                                        column: None,
                                    },
                                );
                            }
                        }
                    }
                }
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    }
}

pub(super) fn expose(out: &mut Vec<Exposure>, e: Exposure) {
    if out.contains(&e) {
        return;
    }
    if out.len() >= MAX_EXPOSURES {
        let any = Exposure {
            relation: Vec::new(),
            column: None,
        };
        if !out.contains(&any) {
            out.push(any);
        }
        return;
    }
    out.push(e);
}
