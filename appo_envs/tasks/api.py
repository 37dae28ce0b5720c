"""Customer-service tasks on the shop API for ``appo/API-v0`` (in the style of tau-bench).

A task is a seeded shop (the fixture a session starts from) plus a customer's request
made of one or two intents — cancel an order, refund a damaged item, move house, place an
order — that need reads (find the customer, the order, the product) and writes. The gold
outcome is the data after the intended writes are applied to a fresh session; an episode
succeeds iff its session's final data equal the gold data exactly, so a missing, wrong or
double-applied write fails, and the first difference found is reported.

Intents are chosen so that the final data do not depend on the order of the writes, and
no two intents of a task create rows in the same table (so new ids are the same whatever
the order).
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import urlencode

import numpy as np

from sandboxes.corpus import make_person_names, make_words

from appo_envs.tools.api_tool import ApiAdmin

PRODUCT_NOUNS = ("Kettle", "Lantern", "Backpack", "Teapot", "Blender", "Desk Lamp", "Notebook", "Umbrella", "Scarf",
                 "Headphones", "Water Bottle", "Toaster", "Chess Set", "Yoga Mat", "Camera Strap", "Bird Feeder")
PRODUCT_MATERIALS = ("Brass", "Walnut", "Copper", "Linen", "Granite", "Cobalt", "Amber", "Ivory", "Slate", "Crimson")
EMAIL_DOMAINS = ("mailbox.example", "post.example", "inbox.example")
ORDER_STATUS_WEIGHTS = {"pending": 0.35, "shipped": 0.2, "delivered": 0.35, "cancelled": 0.1}
DAMAGE_REASON = "damaged"


@dataclass(frozen=True)
class ApiOp:
    """One REST request (method, path, JSON body or None)."""

    method: str
    path: str
    body: dict[str, Any] | None = None

    @property
    def is_write(self) -> bool:
        return self.method != "GET"


@dataclass(frozen=True)
class Intent:
    """One thing the customer asks for: the sentence, the reads that find what it needs, the writes."""

    name: str
    sentence: str
    reads: tuple[ApiOp, ...]
    writes: tuple[ApiOp, ...]


@dataclass
class ApiTask:
    """A shop, a customer's request, and the gold outcome (filled in by the env from the service)."""

    task_id: str
    question: str
    fixture: dict[str, Any]
    customer_id: str
    intents: list[Intent]
    gold: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def plan(self) -> list[ApiOp]:
        """Every request a careful agent makes, in order: per intent, its reads then its writes."""
        return [op for it in self.intents for op in (*it.reads, *it.writes)]

    @property
    def writes(self) -> list[ApiOp]:
        return [op for it in self.intents for op in it.writes]


def _distinct_ints(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    return [int(x) + low for x in rng.choice(high - low, size=n, replace=False)]


def make_address(rng: np.random.Generator, taken: set[str]) -> str:
    street, town = make_words(rng, 2, (2, 3), taken)
    return f"{int(rng.integers(1, 400))} {street} Street, {town}"


def generate_fixture(rng: np.random.Generator, n_customers: int = 8, n_products: int = 12) -> dict[str, Any]:
    """A seeded shop: customers, products with stock, orders in every status, a few refunds, id counters."""
    taken: set[str] = set()
    names = make_person_names(rng, n_customers, taken)
    customers = []
    for cid, name in zip(_distinct_ints(rng, n_customers, 1000, 10000), names):
        first, last = name.lower().split()
        customers.append({"id": f"C-{cid}", "name": name, "email": f"{first}.{last}@{rng.choice(EMAIL_DOMAINS)}",
                          "address": make_address(rng, taken), "tier": str(rng.choice(["standard", "gold"])),
                          "credit_cents": int(rng.integers(0, 20)) * 250})
    pairs = rng.choice(len(PRODUCT_NOUNS) * len(PRODUCT_MATERIALS), size=n_products, replace=False)
    products = [{"id": f"P-{pid}", "name": f"{PRODUCT_MATERIALS[int(k) % len(PRODUCT_MATERIALS)]} "
                                           f"{PRODUCT_NOUNS[int(k) // len(PRODUCT_MATERIALS)]}",
                 "price_cents": int(rng.integers(5, 200)) * 100 - 1, "stock": int(rng.integers(0, 16))}
                for pid, k in zip(_distinct_ints(rng, n_products, 100, 1000), pairs)]
    statuses = list(ORDER_STATUS_WEIGHTS)
    n_orders = [int(rng.integers(1, 5)) for _ in customers]
    order_ids = iter(_distinct_ints(rng, sum(n_orders), 1000, 5000))
    orders, refunds = [], []
    refund_ids = iter(_distinct_ints(rng, sum(n_orders), 100, 500))
    for customer, n in zip(customers, n_orders):
        for _ in range(n):
            picked = rng.choice(len(products), size=int(rng.integers(1, 4)), replace=False)
            items = [{"product_id": products[int(i)]["id"], "quantity": int(rng.integers(1, 4)),
                      "unit_price_cents": products[int(i)]["price_cents"]} for i in sorted(picked)]
            status = statuses[int(rng.choice(len(statuses), p=list(ORDER_STATUS_WEIGHTS.values())))]
            order = {"id": f"O-{next(order_ids)}", "customer_id": customer["id"], "status": status,
                     "shipping_address": customer["address"], "items": items}
            orders.append(order)
            if status == "delivered" and rng.random() < 0.2:
                refunds.append({"id": f"R-{next(refund_ids)}", "order_id": order["id"], "method": "original",
                                "amount_cents": items[0]["unit_price_cents"], "reason": "late delivery"})
    counters = {"orders": int(rng.integers(5000, 9000)), "refunds": int(rng.integers(500, 900)),
                "credits": int(rng.integers(100, 900))}
    return {"customers": customers, "products": products, "orders": orders, "refunds": refunds, "credits": [],
            "counters": counters}


# --- intents ---------------------------------------------------------------------------------

def _get(path: str, **query: str) -> ApiOp:
    return ApiOp("GET", f"{path}?{urlencode(query)}" if query else path)


def find_customer_op(customer: dict[str, Any]) -> ApiOp:
    """The read that finds a customer by the email they gave."""
    return _get("/customers", email=customer["email"])


def _orders_of(fixture: dict[str, Any], customer_id: str, status: str | None = None) -> list[dict[str, Any]]:
    return [o for o in fixture["orders"] if o["customer_id"] == customer_id and status in (None, o["status"])]


def _product(fixture: dict[str, Any], product_id: str) -> dict[str, Any]:
    return next(p for p in fixture["products"] if p["id"] == product_id)


def _cancel_pending(rng: np.random.Generator, fixture: dict[str, Any], c: dict[str, Any]) -> Intent | None:
    pending = _orders_of(fixture, c["id"], "pending")
    counts: dict[str, int] = {}
    for o in pending:
        for it in o["items"]:
            counts[it["product_id"]] = counts.get(it["product_id"], 0) + 1
    candidates = [(o, it) for o in pending for it in o["items"] if counts[it["product_id"]] == 1]
    if not candidates:
        return None
    order, item = candidates[int(rng.integers(len(candidates)))]
    name = _product(fixture, item["product_id"])["name"]
    return Intent("cancel_pending", f"Please cancel my pending order that contains the {name}.",
                  reads=(find_customer_op(c), _get("/orders", customer_id=c["id"], status="pending")),
                  writes=(ApiOp("POST", f"/orders/{order['id']}/cancel", {}),))


def _refund_damaged(rng: np.random.Generator, fixture: dict[str, Any], c: dict[str, Any]) -> Intent | None:
    refunded = {r["order_id"] for r in fixture["refunds"]}
    delivered = [o for o in _orders_of(fixture, c["id"], "delivered") if o["id"] not in refunded]
    if not delivered:
        return None
    order = delivered[int(rng.integers(len(delivered)))]
    item = order["items"][int(rng.integers(len(order["items"])))]
    name = _product(fixture, item["product_id"])["name"]
    amount = item["quantity"] * item["unit_price_cents"]
    return Intent("refund_damaged",
                  f"The {name} in my order {order['id']} arrived damaged. Refund everything I paid for that item as "
                  f"store credit, with the reason \"{DAMAGE_REASON}\".",
                  reads=(find_customer_op(c), _get(f"/orders/{order['id']}")),
                  writes=(ApiOp("POST", f"/orders/{order['id']}/refunds",
                                {"amount_cents": amount, "method": "store_credit", "reason": DAMAGE_REASON}),))


def _move_house(rng: np.random.Generator, fixture: dict[str, Any], c: dict[str, Any]) -> Intent | None:
    pending = _orders_of(fixture, c["id"], "pending")
    if not pending:
        return None
    address = make_address(rng, set())
    return Intent("move_house", f"I have moved to {address}. Update the address on my account and the shipping "
                  "address of every pending order of mine.",
                  reads=(find_customer_op(c), _get("/orders", customer_id=c["id"], status="pending")),
                  writes=(ApiOp("PATCH", f"/customers/{c['id']}", {"address": address}),
                          *(ApiOp("PATCH", f"/orders/{o['id']}", {"shipping_address": address}) for o in pending)))


def _place_order(rng: np.random.Generator, fixture: dict[str, Any], c: dict[str, Any]) -> Intent | None:
    quantity = int(rng.integers(1, 4))
    in_stock = [p for p in fixture["products"] if p["stock"] >= quantity]
    if not in_stock:
        return None
    product = in_stock[int(rng.integers(len(in_stock)))]
    return Intent("place_order", f"Please order {quantity} x {product['name']} for me, shipped to the address on "
                  "my account.",
                  reads=(find_customer_op(c), _get("/products", name=product["name"])),
                  writes=(ApiOp("POST", "/orders", {"customer_id": c["id"], "items": [
                      {"product_id": product["id"], "quantity": quantity}]}),))


IntentMaker = Callable[[np.random.Generator, dict[str, Any], dict[str, Any]], "Intent | None"]
INTENTS: dict[str, IntentMaker] = {"cancel_pending": _cancel_pending, "refund_damaged": _refund_damaged,
                                   "move_house": _move_house, "place_order": _place_order}
# Pairs whose gold outcome would depend on the order of the writes: a new order takes the
# account's address; a cancelled order can no longer get a new shipping address.
INCOMPATIBLE = {frozenset({"move_house", "place_order"}), frozenset({"move_house", "cancel_pending"})}


def _task_id(kind: str, fixture: dict[str, Any], intents: list[Intent]) -> str:
    blob = json.dumps([fixture, [(i.name, i.sentence) for i in intents]], sort_keys=True)
    return f"{kind}-{'+'.join(i.name for i in intents)}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def check_intent_request(n_intents: int | None, intents: list[str] | None) -> list[str]:
    """The intent names to draw from (``intents``, default all), once sure that ``n_intents`` of them can be asked."""
    if isinstance(intents, str):
        raise ValueError(f"intents must be a list of intent names, e.g. [{intents!r}], got the string {intents!r}")
    names = list(INTENTS) if intents is None else list(intents)
    unknown = set(names) - set(INTENTS)
    if unknown:
        raise ValueError(f"unknown intent(s) {sorted(unknown)}; intents: {sorted(INTENTS)}")
    if not names:
        raise ValueError(f"intents must name at least one intent (or be None for all of {sorted(INTENTS)})")
    if len(set(names)) < len(names):
        raise ValueError(f"intents names an intent more than once: {names}")
    if n_intents is not None and (isinstance(n_intents, bool) or not isinstance(n_intents, (int, np.integer))
                                  or n_intents not in (1, 2)):
        raise ValueError(f"n_intents must be 1, 2 or None (random), got {n_intents!r}")
    if n_intents == 2 and all(frozenset(pair) in INCOMPATIBLE for pair in itertools.combinations(names, 2)):
        raise ValueError(f"n_intents=2 needs two intents that can be combined, but intents {names} has none "
                         f"(incompatible pairs: {sorted(sorted(p) for p in INCOMPATIBLE)}); add an intent or ask for 1")
    return names


def generate_api_task(rng: np.random.Generator, n_intents: int | None = None, intents: list[str] | None = None) -> ApiTask:
    """A shop and a request of ``n_intents`` (1 or 2; random if None) intents drawn from ``intents`` (default all).

    With n_intents None a drawn pair that cannot be combined (``INCOMPATIBLE``) becomes one
    intent; with n_intents=2 another pair is drawn.
    """
    names = check_intent_request(n_intents, intents)
    while True:  # a shop rarely offers no customer for the drawn intents; then draw another shop
        fixture = generate_fixture(rng)
        k = n_intents or int(rng.integers(1, 3))
        chosen = [names[int(i)] for i in rng.permutation(len(names))[: min(k, len(names))]]
        if len(chosen) == 2 and frozenset(chosen) in INCOMPATIBLE:
            if n_intents == 2:
                continue
            chosen = chosen[:1]
        for ci in rng.permutation(len(fixture["customers"])):
            c = fixture["customers"][int(ci)]
            made = [INTENTS[n](rng, fixture, c) for n in chosen]
            if all(m is not None for m in made):
                sentences = " ".join(m.sentence for m in made)
                question = (f"Hi, I'm {c['name']} (email {c['email']}). {sentences} "
                            "Use the api tool to do this. When everything is done, reply with "
                            "<answer>done</answer>.")
                return ApiTask(task_id=_task_id("api", fixture, made), question=question, fixture=fixture,
                               customer_id=c["id"], intents=made)


# --- gold outcome and grading ---------------------------------------------------------------

def compare_outcome(actual: dict[str, list[dict[str, Any]]], gold: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Per table: "ok" or the first difference between the session's data and the gold data."""
    checks: dict[str, str] = {}
    for table, gold_rows in gold.items():
        key = (lambda r: (r["order_id"], r["product_id"])) if table == "order_items" else (lambda r: r["id"])
        want = {key(r): r for r in gold_rows}
        have = {key(r): r for r in actual.get(table, [])}
        problem = None
        for k, row in want.items():
            if k not in have:
                problem = f"{table} {k} is missing (an expected write was not made)"
                break
            diff = [c for c in row if have[k].get(c) != row[c]]
            if diff:
                c = diff[0]
                problem = f"{table} {k}.{c} is {have[k].get(c)!r}, expected {row[c]!r}"
                break
        if problem is None:
            extra = sorted(set(have) - set(want), key=str)
            if extra:
                problem = (f"{table} has {len(extra)} unexpected row(s), first {extra[0]} "
                           "(a write applied twice, or one that was not asked for)")
        checks[table] = problem or "ok"
    return checks


class GradedTask(Protocol):
    """What grading on the final data needs from a task (API and Mixed tasks both have it)."""

    fixture: dict[str, Any]
    gold: dict[str, list[dict[str, Any]]]

    @property
    def writes(self) -> list[ApiOp]: ...


def gold_outcome(admin: ApiAdmin, fixture: dict[str, Any], writes: list[ApiOp]) -> dict[str, list[dict[str, Any]]]:
    """The data after applying ``writes`` to a fresh session holding ``fixture`` (the session is then deleted)."""
    session_id, token = admin.create(fixture)
    try:
        for op in writes:
            r = admin.request(token, op.method, op.path, op.body)
            if not r.is_success:
                raise RuntimeError(f"gold write {op.method} {op.path} {op.body} failed with HTTP {r.status_code}: "
                                   f"{r.text[:300]} (a task-generator bug: please report it with the seed)")
        return admin.snapshot(session_id)
    finally:
        admin.delete(session_id)
