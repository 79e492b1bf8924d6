"""The fleet variants of the shipped rsyslog drop-ins, written from the shipped files.

``install.sh --shards N`` / ``--relayed-port P`` and ``--relay HOST:PORT,...`` run this
file as a script with the system's python3 (it imports nothing of the package, so it
runs before and without the package's dependencies); the tests use the same functions.

* Receiver (``rsyslog.d/30-kpr-omprog.conf``): its one omprog action becomes N, one per
  shard, behind ``hash64mod(sender ip, N, SHARD_SEED)``, each running
  ``kpr-omprog omprog --shard K`` with a queue of its own. With a relayed port, a TCP
  input takes the relay's frames (each already is the JSON line kpr-omprog reads) and
  hashes them by the ORIGINAL sender's ip, so a host reaches the same shard whether it
  sends directly or through a relay. Both inputs hand the action a ready line in
  ``$.kpr_line``, so the action (and its process) is one for both.
* Relay (``rsyslog.d/40-kpr-omprog-relay.conf``): its omfwd actions become one per
  receiver, behind ``hash64mod($fromhost-ip, R)``.

The relay hashes with rsyslog's default seed and the receiver's shards with
SHARD_SEED: with the same seed and N == R, every host a relay sends to receiver k has
hash % N == k, and all of them would land on one shard of that receiver.
"""

from __future__ import annotations

import argparse
import re
import sys

__all__ = ["SHARD_SEED", "receiver_dropin", "relay_dropin"]

#: the receiver's shard hash seed; any value but the relay's (rsyslog's default, 0)
SHARD_SEED = 7
#: more shards or receivers than this is a typo, not a fleet
MAX_WAYS = 64


class DropinError(ValueError):
    """The shipped file does not have the shape this transform expects (it was edited)."""


def _block(text: str, start: str) -> tuple[int, int]:
    """The span of the action that begins with ``start``: up to its closing parenthesis."""
    i = text.find(start)
    if i < 0:
        raise DropinError(f"no {start!r} in the shipped drop-in")
    i = text.rfind("\n", 0, i) + 1
    depth, j = 0, text.index("(", i)
    while j < len(text):
        c = text[j]
        if c == '"':
            j = text.index('"', j + 1)
        elif c == "#":
            j = text.index("\n", j)
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i, j + 1
        j += 1
    raise DropinError(f"{start!r}: no closing parenthesis")


def _switch(var: str, hash_expr: str, blocks: list[str]) -> str:
    """``set var = hash; if var == 0 then { block 0 } else if ... else { last }``."""
    if len(blocks) == 1:
        return blocks[0]
    out = [f"    set {var} = {hash_expr};"]
    for k, b in enumerate(blocks):
        head = (f"    if {var} == {k} then {{" if k == 0 else
                f"    }} else if {var} == {k} then {{" if k < len(blocks) - 1 else "    } else {")
        out.append(head)
        out.append("\n".join("    " + line if line else line for line in b.split("\n")))
    out.append("    }")
    return "\n".join(out)


def _sub(text: str, old: str, new: str) -> str:
    if old not in text:
        raise DropinError(f"no {old!r} in the shipped drop-in")
    return text.replace(old, new)


def receiver_dropin(shipped: str, shards: int = 1, relayed_port: int | None = None,
                    relayed_address: str | None = None) -> str:
    """The receiver drop-in with ``shards`` omprog actions and, with ``relayed_port``, a TCP
    input for a relay's frames. ``shards=1`` and no port: the shipped file unchanged."""
    if not 1 <= shards <= MAX_WAYS:
        raise DropinError(f"shards: {shards} is not 1-{MAX_WAYS}")
    if shards == 1 and relayed_port is None:
        return shipped
    i, j = _block(shipped, 'action(type="omprog"')
    proto = shipped[i:j]
    proto = _sub(proto, 'template="kpr_omprog_json"', 'template="kpr_omprog_line"')
    if shards == 1:
        blocks = [proto]
    else:
        blocks = []
        for k in range(shards):
            b = _sub(proto, 'type="omprog" name="kpr_omprog"', f'type="omprog" name="kpr_omprog_{k}"')
            b = _sub(b, 'queue.filename="kpr_omprog"', f'queue.filename="kpr_omprog_{k}"')
            b = re.sub(r'(binary="[^"]*--omprog)', rf"\1 --shard {k}", b, count=1)
            if f"--shard {k}" not in b:
                raise DropinError("no '--omprog' in the action's binary=")
            blocks.append(b)
    # The UDP ruleset makes the line and hands it on; the shards ruleset picks the action.
    into = ('    # the line kpr-omprog reads, and the sender the shard is picked by\n'
            '    set $.kpr_ip = $fromhost-ip;\n'
            '    set $.kpr_line = exec_template("kpr_omprog_json");\n'
            '    call kpr_omprog_shards\n'
            '}\n\n'
            '# Every line of a host to the same action, and so to the same kpr-omprog process.\n'
            'ruleset(name="kpr_omprog_shards") {\n'
            + _switch("$.kpr_shard", f"hash64mod($.kpr_ip, {shards}, {SHARD_SEED})", blocks))
    text = shipped[:i] + into + shipped[j:]
    text = _sub(text, 'module(load="omprog")\n', 'module(load="omprog")\n'
                + ('module(load="fmhash")\n' if shards > 1 else ""))
    text = _sub(text, "\nruleset(name=\"kpr_omprog\")",
                '\n# the line as made above (direct UDP) or as the relay made it (relayed TCP)\n'
                'template(name="kpr_omprog_line" type="string" string="%$.kpr_line%")\n'
                "\nruleset(name=\"kpr_omprog\")")
    if relayed_port is not None:
        addr = f'address="{relayed_address}" ' if relayed_address else ""
        text += f"""
# --- frames from a kpr-omprog relay (40-kpr-omprog-relay.conf) over TCP -----------------
# Each frame (octet-counted) is the JSON line the relay made: the original sender's ip,
# its receive time and the datagram. The shard is picked by that ip, never by the relay's.
# A frame that is not JSON goes on with the relay's ip, and kpr-omprog counts it malformed.
module(load="imtcp")
ruleset(name="kpr_omprog_relayed") {{
    if parse_json($rawmsg, "\\$.kpr") == 0 and $.kpr!ip != "" then {{
        set $.kpr_ip = $.kpr!ip;
    }} else {{
        set $.kpr_ip = $fromhost-ip;
    }}
    set $.kpr_line = $rawmsg;
    call kpr_omprog_shards
}}
input(type="imtcp" {addr}port="{relayed_port}" ruleset="kpr_omprog_relayed" name="kpr_omprog_relayed"
      supportOctetCountedFraming="on")
"""
    return text


def relay_dropin(shipped: str, receivers: list[tuple[str, int]]) -> str:
    """The relay drop-in forwarding to ``receivers`` (host, TCP port), one per hash value."""
    if not 1 <= len(receivers) <= MAX_WAYS:
        raise DropinError(f"receivers: {len(receivers)} is not 1-{MAX_WAYS}")
    start = shipped.find("    set $.kpr_receiver")
    if start < 0:
        raise DropinError("no 'set $.kpr_receiver' in the shipped relay drop-in")
    i, j = _block(shipped, 'action(type="omfwd"')
    end = shipped.index("    }\n", j) + len("    }\n")
    proto = shipped[i:j]
    # the shipped file's first receiver is the pattern; its own lines are indented once more
    proto = "\n".join(line[4:] if line.startswith("    ") else line for line in proto.split("\n"))
    blocks = []
    for k, (host, port) in enumerate(receivers):
        b = re.sub(r'name="kpr_relay_\d+"', f'name="kpr_relay_{k}"', proto)
        b = re.sub(r'queue.filename="kpr_relay_\d+"', f'queue.filename="kpr_relay_{k}"', b)
        b = re.sub(r'target="[^"]*"', f'target="{host}"', b)
        b = re.sub(r'port="\d+"', f'port="{port}"', b)
        blocks.append(b)
    switch = _switch("$.kpr_receiver", f"hash64mod($fromhost-ip, {len(receivers)})", blocks)
    return shipped[:start] + switch + "\n" + shipped[end:]


def _receivers(value: str) -> list[tuple[str, int]]:
    out = []
    for item in value.split(","):
        host, _, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or not re.fullmatch(r"[\w.:-]+", host):
            raise DropinError(f"--receivers: {item!r} is not HOST:PORT")
        out.append((host, int(port)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dropin.py", description="Write a fleet drop-in from the shipped one "
                                "(stdin) to stdout.")
    sub = p.add_subparsers(dest="kind", required=True)
    r = sub.add_parser("receiver")
    r.add_argument("--shards", type=int, default=1)
    r.add_argument("--relayed-port", type=int)
    r.add_argument("--relayed-address")
    rl = sub.add_parser("relay")
    rl.add_argument("--receivers", required=True, help="HOST:PORT,HOST:PORT,...")
    args = p.parse_args(argv)
    try:
        text = sys.stdin.read()
        if args.kind == "receiver":
            out = receiver_dropin(text, args.shards, args.relayed_port, args.relayed_address)
        else:
            out = relay_dropin(text, _receivers(args.receivers))
    except DropinError as e:
        sys.stderr.write(f"dropin.py {args.kind}: error: {e}\n")
        return 2
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
