//! One parsed statement to classes: the statement's own effect, then a walk
//! of its whole tree for nested statements (writes in CTEs), `SELECT INTO`,
//! row locks, side-effect functions, and columns returned transformed.
//!
//! Side-effect functions (best effort, matched on the unqualified name,
//! case-folded like PostgreSQL): sequence and large-object writers and
//! `pg_notify` are `write`; backend, server, WAL, replication-slot and
//! server-file functions, statistics resets and the `dblink` family (SQL run
//! elsewhere, outside the gateway's view) are `system`; `set_config` is
//! `role_switch` for `role` / `session_authorization` or a name that is not a
//! literal, else `session_config`. A user-defined function is opaque.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterTableOperation, CopyTarget, Expr, FromTable, FunctionArg, FunctionArgExpr,
    FunctionArguments, Ident, ObjectName, ObjectNamePart, ObjectType, Query, Reset, Select, Set,
    Statement, TableFactor, TableObject, UtilityOption, Value, Visit, Visitor,
};

use super::exposure::{expose, projection_exposures, Scope};
use super::{Classification, StatementClass};
use StatementClass::*;

/// Classifies one top-level statement into `out`.
pub(super) fn classify_statement(s: &Statement, out: &mut Classification) {
    match s {
        Statement::Explain {
            analyze,
            options,
            statement,
            ..
        } => {
            if explain_runs(*analyze, options.as_deref()) {
                classify_statement(statement, out);
            } else {
                out.classes.insert(Read);
            }
        }
        Statement::Prepare {
            name, statement, ..
        } => {
            out.classes.insert(SessionConfig);
            let mut inner = Classification::default();
            classify_statement(statement, &mut inner);
            // Exposures are checked when the statement is prepared.
            for e in inner.exposures {
                expose(&mut out.exposures, e);
            }
            if out.unparsed_reason.is_none() {
                out.unparsed_reason = inner.unparsed_reason;
            }
            out.prepares.push((fold(name), inner.classes));
        }
        _ => {
            let _ = s.visit(&mut Walker { out });
        }
    }
}

/// EXPLAIN runs the statement with ANALYZE (keyword, or the option list
/// with no argument or a true one).
fn explain_runs(analyze: bool, options: Option<&[UtilityOption]>) -> bool {
    analyze
        || options.unwrap_or_default().iter().any(|o| {
            o.name.value.eq_ignore_ascii_case("analyze")
                && match &o.arg {
                    None => true,
                    Some(arg) => !is_false(arg),
                }
        })
}

fn is_false(e: &Expr) -> bool {
    let text = match e {
        Expr::Value(v) => match &v.value {
            Value::Boolean(b) => return !b,
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) => s.clone(),
            _ => return false,
        },
        Expr::Identifier(id) => id.value.clone(),
        _ => return false,
    };
    matches!(
        text.to_ascii_lowercase().as_str(),
        "false" | "off" | "0" | "no"
    )
}

struct Walker<'a> {
    out: &'a mut Classification,
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        statement_classes(s, self.out);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            // FOR UPDATE / SHARE lock rows: a write to the tuples' headers.
            self.out.classes.insert(Write);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.out.classes.insert(Ddl);
        }
        let scope = Scope::of(&s.from);
        projection_exposures(&s.projection, &scope, &mut self.out.exposures);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let first = match &f.args {
                FunctionArguments::List(l) => l.args.first(),
                _ => None,
            };
            function_classes(&f.name, first, &mut self.out.classes);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => function_classes(name, args.args.first(), &mut self.out.classes),
            TableFactor::Function { name, args, .. } => {
                function_classes(name, args.first(), &mut self.out.classes)
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The effect of one statement node, without its children.
fn statement_classes(s: &Statement, out: &mut Classification) {
    let classes: &[StatementClass] = match s {
        Statement::Query(_) => &[Read],
        Statement::Insert(i) => {
            if let Some(items) = &i.returning {
                let scope = match &i.table {
                    TableObject::TableName(name) => {
                        Scope::single(name, i.table_alias.as_ref().map(|a| &a.alias))
                    }
                    _ => Scope::default(),
                };
                projection_exposures(items, &scope, &mut out.exposures);
            }
            &[Write]
        }
        Statement::Update(u) => {
            if let Some(items) = &u.returning {
                let scope = Scope::of(std::slice::from_ref(&u.table));
                projection_exposures(items, &scope, &mut out.exposures);
            }
            if u.selection.is_none() {
                &[Write, UpdateWithoutWhere]
            } else {
                &[Write]
            }
        }
        Statement::Delete(d) => {
            if let Some(items) = &d.returning {
                let from = match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                projection_exposures(items, &Scope::of(from), &mut out.exposures);
            }
            if d.selection.is_none() {
                &[Write, DeleteWithoutWhere]
            } else {
                &[Write]
            }
        }
        Statement::Merge { .. } => &[Write],
        Statement::Copy { to, target, .. } => match (target, *to) {
            (CopyTarget::Program { .. }, true) => &[CopyProgram, Read],
            (CopyTarget::Program { .. }, false) => &[CopyProgram, Write],
            // Server-side files: pg_read/write_server_files territory.
            (CopyTarget::File { .. }, true) => &[Read, System],
            (CopyTarget::File { .. }, false) => &[Write, System],
            (_, true) => &[Read],
            (_, false) => &[Write],
        },
        Statement::Truncate { .. } => &[Truncate, Write],
        Statement::Drop { object_type, .. } => match object_type {
            ObjectType::Role | ObjectType::User | ObjectType::Group => &[Drop, Privilege],
            _ => &[Drop, Ddl],
        },
        Statement::DropPolicy { .. } => &[Drop, Ddl, Privilege],
        Statement::DropFunction { .. }
        | Statement::DropDomain { .. }
        | Statement::DropProcedure { .. }
        | Statement::DropRule { .. }
        | Statement::DropExtension { .. }
        | Statement::DropOperator { .. }
        | Statement::DropOperatorFamily { .. }
        | Statement::DropOperatorClass { .. }
        | Statement::DropTrigger { .. } => &[Drop, Ddl],
        Statement::AlterTable(t) => {
            let ops = &t.operations;
            let drops = ops
                .iter()
                .any(|o| matches!(o, AlterTableOperation::DropColumn { .. }));
            let privilege = ops.iter().any(|o| {
                matches!(
                    o,
                    AlterTableOperation::OwnerTo { .. }
                        | AlterTableOperation::EnableRowLevelSecurity
                        | AlterTableOperation::DisableRowLevelSecurity
                        | AlterTableOperation::ForceRowLevelSecurity
                        | AlterTableOperation::NoForceRowLevelSecurity
                )
            });
            match (drops, privilege) {
                (true, true) => &[Ddl, Drop, Privilege],
                (true, false) => &[Ddl, Drop],
                (false, true) => &[Ddl, Privilege],
                (false, false) => &[Ddl],
            }
        }
        Statement::CreatePolicy { .. } | Statement::AlterPolicy { .. } => &[Ddl, Privilege],
        Statement::CreateUserMapping { .. } => &[Ddl, Privilege],
        // Extensions load server code (dblink, file_fdw, adminpack...).
        Statement::CreateExtension { .. } => &[Ddl, System],
        Statement::CreateView { .. }
        | Statement::CreateTable { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::CreateDomain { .. }
        | Statement::CreateTrigger { .. }
        | Statement::CreateRule { .. }
        | Statement::CreateForeignTable { .. }
        | Statement::CreateServer { .. }
        | Statement::CreateForeignDataWrapper { .. }
        | Statement::CreateOperator { .. }
        | Statement::CreateOperatorFamily { .. }
        | Statement::CreateOperatorClass { .. }
        | Statement::CreateTextSearch { .. }
        | Statement::CreateAggregate { .. }
        | Statement::CreateCollation { .. }
        | Statement::AlterSchema { .. }
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterFunction { .. }
        | Statement::AlterType { .. }
        | Statement::AlterCollation { .. }
        | Statement::AlterOperator { .. }
        | Statement::AlterOperatorFamily { .. }
        | Statement::AlterOperatorClass { .. }
        | Statement::AlterTextSearch { .. }
        | Statement::AlterTrigger { .. }
        | Statement::Comment { .. }
        | Statement::RenameTable { .. }
        | Statement::Vacuum { .. }
        | Statement::Analyze { .. }
        | Statement::RefreshMaterializedView { .. } => &[Ddl],
        Statement::Grant { .. }
        | Statement::Revoke { .. }
        | Statement::GrantRole { .. }
        | Statement::RevokeRole { .. }
        | Statement::Deny { .. }
        | Statement::CreateRole { .. }
        | Statement::AlterRole { .. }
        | Statement::CreateUser { .. }
        | Statement::AlterUser { .. }
        | Statement::AlterDefaultPrivileges { .. } => &[Privilege],
        Statement::CreateFunction { .. } | Statement::CreateProcedure { .. } => &[Procedural, Ddl],
        Statement::Call { .. } => &[Procedural],
        Statement::Set(set) => set_classes(set),
        Statement::Reset(r) => match &r.reset {
            Reset::ALL => &[SessionConfig],
            Reset::SessionAuthorization => &[RoleSwitch],
            Reset::ConfigurationParameter(name) if is_role_param(name) => &[RoleSwitch],
            Reset::ConfigurationParameter(_) => &[SessionConfig],
        },
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => &[SessionConfig],
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => &[Transaction],
        Statement::Load { .. } => &[System],
        // Locks block other sessions; taking one above ACCESS SHARE needs
        // write privileges.
        Statement::Lock { .. } => &[Write],
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => &[Read],
        Statement::Discard { .. } | Statement::LISTEN { .. } | Statement::UNLISTEN { .. } => {
            &[SessionConfig]
        }
        Statement::NOTIFY { .. } => &[Write],
        // Nested EXPLAIN (the walk also visits its statement: over-approximate).
        Statement::Explain { .. } => &[Read],
        Statement::Prepare { .. } => &[SessionConfig],
        Statement::Execute {
            name: Some(name), ..
        } => {
            out.executes.push(fold_object(name));
            &[]
        }
        Statement::Deallocate { name, .. } => {
            let all = name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all");
            out.deallocates
                .push(if all { None } else { Some(fold(name)) });
            &[SessionConfig]
        }
        _ => {
            out.classes.insert(Unparsed);
            if out.unparsed_reason.is_none() {
                let text = s.to_string();
                let word = text.split_whitespace().next().unwrap_or("");
                out.unparsed_reason = Some(format!("{word} statements are not classified"));
            }
            &[]
        }
    };
    out.classes.extend(classes.iter().copied());
}

fn set_classes(set: &Set) -> &'static [StatementClass] {
    let any_role = match set {
        Set::SetRole { .. } | Set::SetSessionAuthorization(_) => true,
        Set::SetTransaction { .. } => return &[Transaction],
        Set::SingleAssignment { variable, .. } => is_role_param(variable),
        Set::ParenthesizedAssignments { variables, .. } => variables.iter().any(is_role_param),
        Set::MultipleAssignments { assignments } => {
            assignments.iter().any(|a| is_role_param(&a.name))
        }
        _ => false,
    };
    if any_role {
        &[RoleSwitch]
    } else {
        &[SessionConfig]
    }
}

/// `role` and `session_authorization` (GUC names are case-insensitive even
/// when quoted).
fn is_role_param(name: &ObjectName) -> bool {
    last_ident(name).is_some_and(|id| {
        id.value.eq_ignore_ascii_case("role")
            || id.value.eq_ignore_ascii_case("session_authorization")
    })
}

const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "lo_unlink",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_put",
    "lo_write",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "pg_notify",
    "pg_logical_emit_message",
];

const SYSTEM_FUNCTIONS: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_switch_xlog",
    "pg_create_restore_point",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_stat_file",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
];

const SYSTEM_PREFIXES: &[&str] = &[
    "dblink",
    "pg_file_",
    "pg_read_",
    "pg_ls_",
    "pg_stat_reset",
    "pg_replication_origin_",
];

fn function_classes(
    name: &ObjectName,
    first: Option<&FunctionArg>,
    out: &mut BTreeSet<StatementClass>,
) {
    let Some(id) = last_ident(name) else {
        return;
    };
    let f = fold(id);
    if WRITE_FUNCTIONS.contains(&f.as_str()) {
        out.insert(Write);
    } else if SYSTEM_FUNCTIONS.contains(&f.as_str())
        || SYSTEM_PREFIXES.iter().any(|p| f.starts_with(p))
    {
        out.insert(System);
    } else if f == "set_config" {
        let literal = match first {
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => match &v.value {
                Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(s.clone()),
                Value::DollarQuotedString(d) => Some(d.value.clone()),
                _ => None,
            },
            _ => None,
        };
        match literal {
            Some(s)
                if !s.eq_ignore_ascii_case("role")
                    && !s.eq_ignore_ascii_case("session_authorization") =>
            {
                out.insert(SessionConfig);
            }
            _ => {
                out.insert(RoleSwitch);
            }
        }
    }
}

pub(super) fn last_ident(name: &ObjectName) -> Option<&Ident> {
    name.0.last().and_then(ObjectNamePart::as_ident)
}

/// An identifier as PostgreSQL stores it: unquoted ones fold to lower case.
pub(super) fn fold(id: &Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

fn fold_object(name: &ObjectName) -> String {
    last_ident(name).map(fold).unwrap_or_default()
}
