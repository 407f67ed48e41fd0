"""SQL for the PostgreSQL search backend, built with :mod:`psycopg.sql` (pure, no I/O).

One table per index::

    _id   text PRIMARY KEY        the document id
    _doc  jsonb NOT NULL          the document as indexed
    _tsv  tsvector NOT NULL       to_tsvector('english', normalised TEXT fields), GIN index
    "<keyword field>" text        one b-tree indexed column per KEYWORD field
    "<numeric field>" float8      one b-tree indexed column per NUMERIC field

The tsvector is maintained by :func:`upsert_sql` from the text normalised in Python
(see ``_analysis``), not generated from ``_doc``, so that PostgreSQL indexes exactly
the words tantivy does. Every value travels as a bound parameter; identifiers are
quoted with :class:`psycopg.sql.Identifier` and come from validated names only.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import sql

from multistore.stores.search._analysis import Clause
from multistore.stores.search._api import FieldType, SearchSchema
from multistore.stores.search._request import SearchRequest

__all__ = [
    "CONFIG",
    "create_table_sql",
    "filter_columns",
    "search_sql",
    "upsert_sql",
]

#: The text search configuration of the tsvector column and of every tsquery.
CONFIG: Final = sql.SQL("'english'::regconfig")


def create_table_sql(table: str, schema: SearchSchema) -> list[sql.Composed]:
    """CREATE TABLE and its indexes (GIN on the tsvector, b-tree per filter column)."""
    ident = sql.Identifier(table)
    columns: list[sql.Composable] = [
        sql.SQL("_id text PRIMARY KEY"),
        sql.SQL("_doc jsonb NOT NULL"),
        sql.SQL("_tsv tsvector NOT NULL"),
    ]
    indexed: list[str] = []
    for name, kind in schema.fields.items():
        if kind is FieldType.KEYWORD:
            columns.append(sql.SQL("{} text").format(sql.Identifier(name)))
            indexed.append(name)
        elif kind is FieldType.NUMERIC:
            columns.append(sql.SQL("{} double precision").format(sql.Identifier(name)))
            indexed.append(name)
    statements = [
        sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(columns)),
        sql.SQL("CREATE INDEX ON {} USING gin (_tsv)").format(ident),
    ]
    statements += [
        sql.SQL("CREATE INDEX ON {} ({})").format(ident, sql.Identifier(name)) for name in indexed
    ]
    return statements


def filter_columns(schema: SearchSchema) -> list[str]:
    """The KEYWORD then NUMERIC fields: the table's own columns, in upsert order."""
    return schema.names(FieldType.KEYWORD) + schema.names(FieldType.NUMERIC)


def upsert_sql(table: str, schema: SearchSchema) -> sql.Composed:
    """INSERT … ON CONFLICT (_id) DO UPDATE for one document; parameters are
    ``(_id, _doc, normalised text, *filter_columns(schema))``."""
    names = filter_columns(schema)
    columns = [sql.Identifier(n) for n in ("_id", "_doc", "_tsv", *names)]
    values = [
        sql.Placeholder(),
        sql.Placeholder(),
        sql.SQL("to_tsvector({}, {})").format(CONFIG, sql.Placeholder()),
    ] + [sql.Placeholder() for _ in names]
    updates = [
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n)) for n in ("_doc", "_tsv", *names)
    ]
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT (_id) DO UPDATE SET {}").format(
        sql.Identifier(table),
        sql.SQL(", ").join(columns),
        sql.SQL(", ").join(values),
        sql.SQL(", ").join(updates),
    )


def _tsquery(clauses: list[Clause]) -> tuple[sql.Composable, list[Any]]:
    """``phraseto_tsquery(…) && !!phraseto_tsquery(…) …`` for the clauses."""
    parts = [
        sql.SQL("{}phraseto_tsquery({}, {})").format(
            sql.SQL("!!" if clause.negated else ""), CONFIG, sql.Placeholder()
        )
        for clause in clauses
    ]
    return sql.SQL("(") + sql.SQL(" && ").join(parts) + sql.SQL(")"), [c.text for c in clauses]


def _where(request: SearchRequest) -> tuple[sql.Composable, list[Any]]:
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    parsed = request.query
    if parsed.matches_none:
        conditions.append(sql.SQL("false"))
    elif parsed.clauses:
        tsquery, tsparams = _tsquery(list(parsed.clauses))
        conditions.append(sql.SQL("_tsv @@ ") + tsquery)
        params += tsparams
    for field, values in request.filters:
        column = sql.Identifier(field)
        if len(values) == 1:
            conditions.append(sql.SQL("{} = %s").format(column))
            params.append(values[0])
        else:
            conditions.append(sql.SQL("{} = ANY(%s::text[])").format(column))
            params.append(list(values))
    for field, low, high in request.ranges:
        column = sql.Identifier(field)
        if low is None and high is None:
            conditions.append(sql.SQL("{} IS NOT NULL").format(column))
        if low is not None:
            conditions.append(sql.SQL("{} >= %s").format(column))
            params.append(low)
        if high is not None:
            conditions.append(sql.SQL("{} <= %s").format(column))
            params.append(high)
    if not conditions:
        return sql.SQL("true"), params
    return sql.SQL(" AND ").join(conditions), params


def search_sql(table: str, request: SearchRequest) -> tuple[sql.Composed, list[Any]]:
    """One statement (one snapshot) for a whole search. It returns a single row:
    ``total, hits, facet_0, facet_1 …`` where ``hits`` is a JSON list of
    ``[id, score, doc]`` in result order and each facet a JSON object value -> count."""
    ident = sql.Identifier(table)
    params: list[Any] = []
    score: sql.Composable
    if request.scored:
        tsquery, score_params = _tsquery(request.query.positive)
        score = sql.SQL("ts_rank(_tsv, ") + tsquery + sql.SQL(")")
        params += score_params
    else:
        score = sql.SQL("0::real")
    extra = list(request.facets)
    if request.sort is not None and request.sort[0] not in extra:
        extra.append(request.sort[0])
    selected = [sql.SQL("_id"), score + sql.SQL(" AS _score")]
    selected += [sql.Identifier(name) for name in extra]
    where, where_params = _where(request)
    params += where_params
    order: sql.Composable
    if request.sort is None:
        order = sql.SQL("_score DESC, _id")
    else:
        field, descending = request.sort
        order = sql.SQL("{} {} NULLS LAST, _id").format(
            sql.Identifier(field), sql.SQL("DESC" if descending else "ASC")
        )
    params += [request.limit, request.offset]
    facet_columns = [
        sql.SQL(
            "(SELECT coalesce(json_object_agg(f.k, f.n), '{{}}'::json) FROM "
            "(SELECT {0} AS k, count(*) AS n FROM m WHERE {0} IS NOT NULL GROUP BY {0}) AS f)"
        ).format(sql.Identifier(name))
        for name in request.facets
    ]
    statement = sql.SQL(
        "WITH m AS (SELECT {selected} FROM {table} WHERE {where}), "
        "page AS (SELECT _id, _score, row_number() OVER (ORDER BY {order}) AS _n "
        "FROM m ORDER BY {order} LIMIT %s OFFSET %s) "
        "SELECT (SELECT count(*) FROM m), "
        "(SELECT coalesce(json_agg(json_build_array(page._id, page._score, t._doc) "
        "ORDER BY page._n), '[]'::json) FROM page JOIN {table} AS t ON t._id = page._id)"
        "{facets}"
    ).format(
        selected=sql.SQL(", ").join(selected),
        table=ident,
        where=where,
        order=order,
        facets=sql.SQL("").join(sql.SQL(", ") + column for column in facet_columns),
    )
    return statement, params
