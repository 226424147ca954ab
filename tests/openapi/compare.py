#!/usr/bin/env python3
"""Semantic comparison of two OpenAPI documents: every path, method, status, content type,
parameter and schema property of OLD must be in NEW with the same type, nullability,
requiredness and constraints. Prints the differences; exits 1 when there are any.
Usage: compare.py OLD.json NEW.json"""
import json, sys

KEYS = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "maxLength",
        "minLength", "maxProperties", "minItems", "maxItems", "default"]

def load(p):
    return json.load(open(p))

def resolve(doc, s, seen=()):
    while isinstance(s, dict) and "$ref" in s:
        r = s["$ref"]
        if r in seen:
            return s
        seen = seen + (r,)
        parts = r.lstrip("#/").split("/")
        t = doc
        for p in parts:
            t = t[p]
        s = t
    return s

def norm(doc, s):
    """(schema without null, nullable) with refs resolved."""
    s = resolve(doc, s)
    if not isinstance(s, dict):
        return s, False
    nullable = False
    for k in ("oneOf", "anyOf"):
        if k in s:
            alts = [resolve(doc, a) for a in s[k]]
            rest = [a for a in alts if a.get("type") != "null"]
            if len(rest) < len(alts):
                nullable = True
                if len(rest) == 1:
                    inner, n2 = norm(doc, rest[0])
                    merged = dict(inner)
                    for kk, vv in s.items():
                        if kk not in (k, "description"):
                            merged.setdefault(kk, vv)
                    return merged, nullable or n2
                s = dict(s); s[k] = rest
    t = s.get("type")
    if isinstance(t, list) and "null" in t:
        nullable = True
        t = [x for x in t if x != "null"]
        s = dict(s); s["type"] = t[0] if len(t) == 1 else t
    if s.get("const") is not None:
        s = dict(s); s["enum"] = [s.pop("const")]
    return s, nullable

def cmp(doc_o, doc_n, o, n, where, out, depth=0):
    if depth > 12:
        return
    so, no = norm(doc_o, o)
    sn, nn = norm(doc_n, n)
    if not isinstance(so, dict) or not isinstance(sn, dict):
        if so != sn:
            out.append(f"{where}: {so!r} vs {sn!r}")
        return
    if no != nn:
        out.append(f"{where}: nullable {no} -> {nn}")
    enum_type = {str: "string", int: "integer"}.get(type(((so.get("enum") or [None])[0])))
    if so.get("type") != sn.get("type") and not (so.get("type") is None and sn.get("type") in (None, enum_type)):
        out.append(f"{where}: type {so.get('type')} -> {sn.get('type')}")
    if so.get("enum") is not None and sorted(map(str, so["enum"])) != sorted(map(str, sn.get("enum") or [])):
        out.append(f"{where}: enum {so['enum']} -> {sn.get('enum')}")
    for k in KEYS:
        if so.get(k) != sn.get(k):
            if k == "default" and so.get(k) is None:
                continue
            out.append(f"{where}: {k} {so.get(k)!r} -> {sn.get(k)!r}")
    if so.get("format") and so.get("format") != sn.get("format"):
        out.append(f"{where}: format {so.get('format')} -> {sn.get('format')}")
    if set(so.get("required", [])) != set(sn.get("required", [])):
        out.append(f"{where}: required {sorted(so.get('required', []))} -> {sorted(sn.get('required', []))}")
    po, pn = so.get("properties", {}), sn.get("properties", {})
    for k in po:
        if k not in pn:
            out.append(f"{where}.{k}: missing")
        else:
            cmp(doc_o, doc_n, po[k], pn[k], f"{where}.{k}", out, depth + 1)
    for k in pn:
        if k not in po:
            out.append(f"{where}.{k}: new property")
    ao, an = so.get("additionalProperties"), sn.get("additionalProperties")
    if isinstance(ao, bool) or isinstance(an, bool) or ao is None or an is None:
        if ao != an and not (ao is None and an is True):
            out.append(f"{where}: additionalProperties {ao!r} -> {an!r}")
    else:
        cmp(doc_o, doc_n, ao, an, f"{where}{{*}}", out, depth + 1)
    if so.get("propertyNames") != sn.get("propertyNames"):
        out.append(f"{where}: propertyNames {so.get('propertyNames')} -> {sn.get('propertyNames')}")
    if "items" in so:
        if isinstance(so["items"], dict) and isinstance(sn.get("items"), dict):
            cmp(doc_o, doc_n, so["items"], sn["items"], f"{where}[]", out, depth + 1)
        elif so["items"] != sn.get("items"):
            out.append(f"{where}[]: items {json.dumps(so['items'])[:80]} -> {json.dumps(sn.get('items'))[:80]}")
    for k in ("oneOf", "anyOf"):
        if k in so:
            alts_n = sn.get(k) or sn.get("anyOf" if k == "oneOf" else "oneOf") or sn.get("prefixItems")
            if not alts_n or len(alts_n) != len(so[k]):
                out.append(f"{where}: {k} of {len(so[k])} -> {json.dumps(sn)[:120]}")
            else:
                for i, (a, b) in enumerate(zip(so[k], alts_n)):
                    cmp(doc_o, doc_n, a, b, f"{where}|{i}", out, depth + 1)

def params(doc, path_item, op):
    ps = {}
    for p in path_item.get("parameters", []) + op.get("parameters", []):
        p = resolve(doc, p)
        ps[(p["in"], p["name"])] = p
    return ps

def main(old_p, new_p):
    o, n = load(old_p), load(new_p)
    out = []
    for path, item in o["paths"].items():
        if path not in n["paths"]:
            out.append(f"{path}: missing"); continue
        nitem = n["paths"][path]
        for m, op in item.items():
            if m == "parameters":
                continue
            w = f"{m.upper()} {path}"
            if m not in nitem:
                out.append(f"{w}: missing"); continue
            nop = nitem[m]
            if op.get("operationId") != nop.get("operationId"):
                out.append(f"{w}: operationId {op.get('operationId')} -> {nop.get('operationId')}")
            if bool(op.get("security") == []) != bool(nop.get("security") in ([], [{}])):
                out.append(f"{w}: security {op.get('security')} -> {nop.get('security')}")
            po, pn = params(o, item, op), params(n, nitem, nop)
            for k, p in po.items():
                if k not in pn:
                    out.append(f"{w} param {k}: missing"); continue
                if bool(p.get("required")) != bool(pn[k].get("required")):
                    out.append(f"{w} param {k}: required {p.get('required')} -> {pn[k].get('required')}")
                cmp(o, n, p["schema"], pn[k]["schema"], f"{w} param {k[1]}", out)
            for k in pn:
                if k not in po:
                    out.append(f"{w} param {k}: new")
            rb, nrb = op.get("requestBody"), nop.get("requestBody")
            if rb:
                if not nrb:
                    out.append(f"{w} requestBody: missing")
                else:
                    if bool(rb.get("required")) != bool(nrb.get("required")):
                        out.append(f"{w} requestBody required {rb.get('required')} -> {nrb.get('required')}")
                    for ct, media in rb["content"].items():
                        if ct not in nrb["content"]:
                            out.append(f"{w} requestBody {ct}: missing")
                        else:
                            cmp(o, n, media["schema"], nrb["content"][ct]["schema"], f"{w} body", out)
            for st, r in op["responses"].items():
                nr = nop["responses"].get(st)
                if nr is None:
                    out.append(f"{w} {st}: missing"); continue
                r, nr = resolve(o, r), resolve(n, nr)
                if json.dumps(r.get("links"), sort_keys=True) != json.dumps(nr.get("links"), sort_keys=True):
                    out.append(f"{w} {st}: links {r.get('links')} -> {nr.get('links')}")
                for ct, media in (r.get("content") or {}).items():
                    nm = (nr.get("content") or {}).get(ct)
                    if nm is None:
                        out.append(f"{w} {st} {ct}: missing"); continue
                    cmp(o, n, media.get("schema", {}), nm.get("schema", {}), f"{w} {st}", out)
            for st in nop["responses"]:
                if st not in op["responses"]:
                    out.append(f"{w} {st}: new response")
    for p in n["paths"]:
        if p not in o["paths"]:
            out.append(f"{p}: new path")
    for line in out:
        print(line)
    print(f"{len(out)} differences")
    return 1 if out else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
