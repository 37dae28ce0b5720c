"""The API service's business domain: a small online shop stored in one SQLite database per session.

Tables: ``customers`` (with a store-credit balance), ``products`` (with stock), ``orders``
(``pending`` -> ``shipped`` -> ``delivered``, or ``cancelled`` while pending), their
``order_items``, ``refunds`` of delivered orders and store ``credits``. Every operation
runs in one transaction and either applies completely or raises :class:`ShopError`,
whose HTTP status and message the service returns as JSON. New ids come from per-session
counters stored in the database, so they depend only on the session's own history.
"""
from __future__ import annotations

import re
import sqlite3
from typing import Any

SCHEMA_SQL = """
CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE,
                        address TEXT NOT NULL, tier TEXT NOT NULL, credit_cents INTEGER NOT NULL);
CREATE TABLE products (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, price_cents INTEGER NOT NULL,
                       stock INTEGER NOT NULL);
CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),
                     status TEXT NOT NULL, shipping_address TEXT NOT NULL);
CREATE TABLE order_items (order_id TEXT NOT NULL REFERENCES orders(id), product_id TEXT NOT NULL REFERENCES products(id),
                          quantity INTEGER NOT NULL, unit_price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, product_id));
CREATE TABLE refunds (id TEXT PRIMARY KEY, order_id TEXT NOT NULL REFERENCES orders(id), amount_cents INTEGER NOT NULL,
                      method TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE credits (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(id),
                      amount_cents INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE counters (name TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL);
"""
# Tables that make up the shop's data (what snapshots show and gold outcomes compare).
DATA_TABLES: dict[str, tuple[str, ...]] = {
    "customers": ("id",), "products": ("id",), "orders": ("id",), "order_items": ("order_id", "product_id"),
    "refunds": ("id",), "credits": ("id",),
}
ORDER_STATUSES = ("pending", "shipped", "delivered", "cancelled")
REFUND_METHODS = ("original", "store_credit")
TIERS = ("standard", "gold")
ID_PREFIX = {"customers": "C", "products": "P", "orders": "O", "refunds": "R", "credits": "K"}
_ID = re.compile(r"^[A-Z]-[0-9]{1,9}$")
MAX_TEXT = 500
MAX_ITEMS = 20
MAX_QUANTITY = 1000
MAX_AMOUNT_CENTS = 10**9


class ShopError(Exception):
    """A request the shop refuses: HTTP ``status``, a machine ``code`` and a message saying what to do."""

    def __init__(self, status: int, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def body(self) -> dict[str, Any]:
        out = {"error": self.code, "message": self.message}
        if self.details is not None:
            out["details"] = self.details
        return out


def _invalid(message: str) -> ShopError:
    return ShopError(422, "validation_error", message)


def _field(body: dict[str, Any], key: str, kind: type, required: bool = True) -> Any:
    if key not in body:
        if required:
            raise _invalid(f"missing field {key!r}")
        return None
    value = body[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _invalid(f"field {key!r} must be an integer, got {type(value).__name__}")
    if kind is str:
        if not isinstance(value, str) or not value.strip():
            raise _invalid(f"field {key!r} must be a non-empty string")
        if len(value) > MAX_TEXT:
            raise _invalid(f"field {key!r} is longer than {MAX_TEXT} characters")
    if kind is list and not isinstance(value, list):
        raise _invalid(f"field {key!r} must be a list, got {type(value).__name__}")
    return value


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _invalid(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def check_id(value: str, table: str) -> str:
    """Reject ids that are not of the form ``<prefix>-<digits>`` for ``table``."""
    if not _ID.match(value) or value[0] != ID_PREFIX[table]:
        raise ShopError(404, "not_found", f"no {table[:-1]} with id {value!r} (ids look like {ID_PREFIX[table]}-1234)")
    return value


def connect() -> sqlite3.Connection:
    """A new, empty in-memory shop database (autocommit off; use :func:`transaction`)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.executescript(SCHEMA_SQL)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


class transaction:
    """``with transaction(conn):`` runs the block in BEGIN IMMEDIATE ... COMMIT, rolling back on error."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def copy_database(conn: sqlite3.Connection) -> sqlite3.Connection:
    """An independent copy of a session's database (the fork of a session)."""
    clone = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    conn.backup(clone)
    clone.row_factory = sqlite3.Row
    clone.execute("PRAGMA foreign_keys = ON")
    return clone


def load_fixture(conn: sqlite3.Connection, fixture: dict[str, Any]) -> None:
    """Fill an empty database from plain data; raises ShopError(422) on anything malformed."""
    if not isinstance(fixture, dict):
        raise _invalid("fixture must be an object of table name -> rows")
    allowed = {"customers", "products", "orders", "refunds", "credits", "counters"}
    _only(fixture, allowed)
    try:
        with transaction(conn):
            for c in fixture.get("customers", []):
                conn.execute("INSERT INTO customers VALUES (?,?,?,?,?,?)",
                             (check_id(c["id"], "customers"), c["name"], c["email"], c["address"], c["tier"],
                              int(c["credit_cents"])))
            for p in fixture.get("products", []):
                conn.execute("INSERT INTO products VALUES (?,?,?,?)",
                             (check_id(p["id"], "products"), p["name"], int(p["price_cents"]), int(p["stock"])))
            for o in fixture.get("orders", []):
                if o["status"] not in ORDER_STATUSES:
                    raise _invalid(f"order status must be one of {ORDER_STATUSES}")
                conn.execute("INSERT INTO orders VALUES (?,?,?,?)",
                             (check_id(o["id"], "orders"), o["customer_id"], o["status"], o["shipping_address"]))
                for it in o["items"]:
                    conn.execute("INSERT INTO order_items VALUES (?,?,?,?)",
                                 (o["id"], it["product_id"], int(it["quantity"]), int(it["unit_price_cents"])))
            for r in fixture.get("refunds", []):
                conn.execute("INSERT INTO refunds VALUES (?,?,?,?,?)",
                             (check_id(r["id"], "refunds"), r["order_id"], int(r["amount_cents"]), r["method"], r["reason"]))
            for k in fixture.get("credits", []):
                conn.execute("INSERT INTO credits VALUES (?,?,?,?)",
                             (check_id(k["id"], "credits"), k["customer_id"], int(k["amount_cents"]), k["reason"]))
            for name in ("orders", "refunds", "credits"):
                start = int(fixture.get("counters", {}).get(name, 1000))
                conn.execute("INSERT INTO counters VALUES (?,?)", (name, start))
    except (KeyError, TypeError, ValueError) as e:
        raise _invalid(f"malformed fixture: {type(e).__name__}: {e}") from None
    except sqlite3.IntegrityError as e:
        raise _invalid(f"inconsistent fixture: {e}") from None


def snapshot(conn: sqlite3.Connection) -> dict[str, list[dict[str, Any]]]:
    """Every data table as a list of rows ordered by primary key (what gold outcomes compare)."""
    return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY {', '.join(pk)}")]
            for t, pk in DATA_TABLES.items()}


def _next_id(conn: sqlite3.Connection, table: str) -> str:
    n = conn.execute("SELECT next FROM counters WHERE name = ?", (table,)).fetchone()["next"]
    conn.execute("UPDATE counters SET next = next + 1 WHERE name = ?", (table,))
    return f"{ID_PREFIX[table]}-{n}"


def _one(conn: sqlite3.Connection, table: str, id_: str) -> sqlite3.Row:
    row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (check_id(id_, table),)).fetchone()
    if row is None:
        raise ShopError(404, "not_found", f"no {table[:-1]} with id {id_!r}")
    return row


# --- reads ------------------------------------------------------------------------------------

def get_customer(conn: sqlite3.Connection, customer_id: str) -> dict[str, Any]:
    return dict(_one(conn, "customers", customer_id))


def find_customers(conn: sqlite3.Connection, query: dict[str, str]) -> dict[str, Any]:
    _only(query, {"email", "name"})
    if not query:
        raise _invalid("give a filter: ?email=<exact email> or ?name=<part of the name>")
    rows = conn.execute("SELECT * FROM customers WHERE (? IS NULL OR lower(email) = lower(?)) "
                        "AND (? IS NULL OR instr(lower(name), lower(?)) > 0) ORDER BY id LIMIT 20",
                        (query.get("email"), query.get("email"), query.get("name"), query.get("name")))
    return {"customers": [dict(r) for r in rows]}


def get_product(conn: sqlite3.Connection, product_id: str) -> dict[str, Any]:
    return dict(_one(conn, "products", product_id))


def find_products(conn: sqlite3.Connection, query: dict[str, str]) -> dict[str, Any]:
    _only(query, {"name"})
    rows = conn.execute("SELECT * FROM products WHERE ? IS NULL OR instr(lower(name), lower(?)) > 0 ORDER BY id LIMIT 50",
                        (query.get("name"), query.get("name")))
    return {"products": [dict(r) for r in rows]}


def get_order(conn: sqlite3.Connection, order_id: str) -> dict[str, Any]:
    order = dict(_one(conn, "orders", order_id))
    items = [dict(r) for r in conn.execute(
        "SELECT i.product_id, p.name AS product_name, i.quantity, i.unit_price_cents FROM order_items i "
        "JOIN products p ON p.id = i.product_id WHERE i.order_id = ? ORDER BY i.product_id", (order_id,))]
    refunds = [dict(r) for r in conn.execute("SELECT * FROM refunds WHERE order_id = ? ORDER BY id", (order_id,))]
    for it in items:
        it.pop("order_id", None)
    order.update(items=items, total_cents=sum(i["quantity"] * i["unit_price_cents"] for i in items),
                 refunds=refunds, refunded_cents=sum(r["amount_cents"] for r in refunds))
    return order


def find_orders(conn: sqlite3.Connection, query: dict[str, str]) -> dict[str, Any]:
    _only(query, {"customer_id", "status"})
    if "customer_id" not in query:
        raise _invalid("give ?customer_id=<id> (and optionally &status=<status>)")
    _one(conn, "customers", query["customer_id"])
    ids = conn.execute("SELECT id FROM orders WHERE customer_id = ? AND (? IS NULL OR status = ?) ORDER BY id",
                       (query["customer_id"], query.get("status"), query.get("status")))
    return {"orders": [get_order(conn, r["id"]) for r in ids.fetchall()]}


# --- writes (each inside one transaction) -----------------------------------------------------

def update_customer(conn: sqlite3.Connection, customer_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, {"address", "email"})
    if not body:
        raise _invalid("nothing to change: give 'address' and/or 'email'")
    _one(conn, "customers", customer_id)
    for key in body:
        value = _field(body, key, str)
        if key == "email" and conn.execute("SELECT 1 FROM customers WHERE lower(email) = lower(?) AND id != ?",
                                           (value, customer_id)).fetchone():
            raise ShopError(409, "conflict", f"another customer already uses {value!r}")
        conn.execute(f"UPDATE customers SET {key} = ? WHERE id = ?", (value, customer_id))
    return get_customer(conn, customer_id)


def add_credit(conn: sqlite3.Connection, customer_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, {"amount_cents", "reason"})
    amount, reason = _field(body, "amount_cents", int), _field(body, "reason", str)
    if not 0 < amount <= MAX_AMOUNT_CENTS:
        raise _invalid(f"amount_cents must be in 1..{MAX_AMOUNT_CENTS}")
    _one(conn, "customers", customer_id)
    credit_id = _next_id(conn, "credits")
    conn.execute("INSERT INTO credits VALUES (?,?,?,?)", (credit_id, customer_id, amount, reason))
    conn.execute("UPDATE customers SET credit_cents = credit_cents + ? WHERE id = ?", (amount, customer_id))
    return {"credit": {"id": credit_id, "customer_id": customer_id, "amount_cents": amount, "reason": reason},
            "customer": get_customer(conn, customer_id)}


def create_order(conn: sqlite3.Connection, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, {"customer_id", "items", "shipping_address"})
    customer = _one(conn, "customers", _field(body, "customer_id", str))
    items = _field(body, "items", list)
    address = _field(body, "shipping_address", str, required=False) or customer["address"]
    if not 1 <= len(items) <= MAX_ITEMS:
        raise _invalid(f"items must hold 1..{MAX_ITEMS} entries of {{'product_id', 'quantity'}}")
    seen: set[str] = set()
    order_id = _next_id(conn, "orders")
    conn.execute("INSERT INTO orders VALUES (?,?,?,?)", (order_id, customer["id"], "pending", address))
    for it in items:
        if not isinstance(it, dict):
            raise _invalid("each item must be an object {'product_id': ..., 'quantity': ...}")
        _only(it, {"product_id", "quantity"})
        product = _one(conn, "products", _field(it, "product_id", str))
        qty = _field(it, "quantity", int)
        if not 1 <= qty <= MAX_QUANTITY:
            raise _invalid(f"quantity must be in 1..{MAX_QUANTITY}")
        if product["id"] in seen:
            raise _invalid(f"product {product['id']} is listed twice; give its total quantity once")
        seen.add(product["id"])
        if product["stock"] < qty:
            raise ShopError(409, "out_of_stock", f"only {product['stock']} of {product['id']} in stock, {qty} requested")
        conn.execute("UPDATE products SET stock = stock - ? WHERE id = ?", (qty, product["id"]))
        conn.execute("INSERT INTO order_items VALUES (?,?,?,?)", (order_id, product["id"], qty, product["price_cents"]))
    return get_order(conn, order_id)


def update_order(conn: sqlite3.Connection, order_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, {"shipping_address"})
    address = _field(body, "shipping_address", str)
    order = _one(conn, "orders", order_id)
    if order["status"] != "pending":
        raise ShopError(409, "conflict", f"order {order_id} is {order['status']}; only pending orders can be changed")
    conn.execute("UPDATE orders SET shipping_address = ? WHERE id = ?", (address, order_id))
    return get_order(conn, order_id)


def cancel_order(conn: sqlite3.Connection, order_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, {"reason"})
    order = _one(conn, "orders", order_id)
    if order["status"] != "pending":
        raise ShopError(409, "conflict", f"order {order_id} is {order['status']}; only pending orders can be cancelled")
    for it in conn.execute("SELECT product_id, quantity FROM order_items WHERE order_id = ?", (order_id,)).fetchall():
        conn.execute("UPDATE products SET stock = stock + ? WHERE id = ?", (it["quantity"], it["product_id"]))
    conn.execute("UPDATE orders SET status = 'cancelled' WHERE id = ?", (order_id,))
    return get_order(conn, order_id)


def refund_order(conn: sqlite3.Connection, order_id: str, body: dict[str, Any]) -> dict[str, Any]:
    _only(body, {"amount_cents", "method", "reason"})
    amount, reason = _field(body, "amount_cents", int), _field(body, "reason", str)
    method = _field(body, "method", str)
    if method not in REFUND_METHODS:
        raise _invalid(f"method must be one of {list(REFUND_METHODS)}")
    order = get_order(conn, order_id)
    if order["status"] != "delivered":
        raise ShopError(409, "conflict", f"order {order_id} is {order['status']}; only delivered orders can be refunded")
    if not 0 < amount <= order["total_cents"] - order["refunded_cents"]:
        raise ShopError(409, "refund_too_large", f"amount_cents must be in 1..{order['total_cents'] - order['refunded_cents']} "
                        f"(order total {order['total_cents']}, already refunded {order['refunded_cents']})")
    refund_id = _next_id(conn, "refunds")
    conn.execute("INSERT INTO refunds VALUES (?,?,?,?,?)", (refund_id, order_id, amount, method, reason))
    if method == "store_credit":
        conn.execute("UPDATE customers SET credit_cents = credit_cents + ? WHERE id = ?", (amount, order["customer_id"]))
    return {"refund": {"id": refund_id, "order_id": order_id, "amount_cents": amount, "method": method, "reason": reason},
            "order": get_order(conn, order_id)}

