"""`scratchlm chat`: a conversation with a chat model in the terminal, over scratchlm.generate.chat.

scratchlm chat --ckpt runs/sft --system "Answer in one line." --top-k 50
scratchlm chat --ckpt runs/sft --message "What is 2 + 2?" --temperature 0
echo "What is 2 + 2?" | scratchlm chat --ckpt runs/sft
"""

from __future__ import annotations

import argparse
import sys

from scratchlm.cli import unescape
from scratchlm.cli.derive import add_dataclass_arguments, add_device_arguments, dataclass_from_args
from scratchlm.errors import ScratchError
from scratchlm.fileio import describe_io_error

PROMPT = "you> "
REPLY = "model> "
COMMANDS = """\
/reset        forget the conversation (the system message stays)
/system TEXT  set the system message (/system alone removes it)
/save FILE    write the conversation as JSON
/load FILE    continue a conversation /save wrote
/quit         leave (Ctrl-D too); Ctrl-C stops a reply"""


def register(subparsers) -> None:
    c = subparsers.add_parser(
        "chat",
        help="talk to a chat model (one fine-tuned with sft) in the terminal",
        description="A conversation with a chat model: replies stream as they are generated and the\n"
        "history is kept. With --message, or text on standard input, it answers once and exits.",
        epilog="commands in the conversation:\n" + COMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--ckpt", required=True, help="model folder, or a run folder (uses final/ or its newest)")
    c.add_argument("--system", metavar="TEXT", help="the system message")
    c.add_argument("--message", metavar="TEXT", help="answer this one message and exit")
    # The sampling flags are generate's, derived from SamplingConfig. A reply always ends at <|end|>:
    # stop_at_eot (generate's --ignore-eot) has no meaning here.
    from scratchlm.generate.config import SamplingConfig

    add_dataclass_arguments(c, SamplingConfig, skip=("stop_at_eot",), value_types={"stop": unescape})
    add_device_arguments(c)
    c.set_defaults(func=run_chat)


def run_chat(args) -> int:
    import torch  # here, not at the top: `--help` never imports torch

    from scratchlm.eval.checkpoint import load_checkpoint
    from scratchlm.generate.chat import ChatSession
    from scratchlm.generate.config import SamplingConfig

    config = dataclass_from_args(SamplingConfig, args)
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=args.device, dtype=args.dtype)
    if args.seed is not None:
        torch.manual_seed(args.seed)
    session = ChatSession(model, tokenizer, config, system=args.system)
    if args.message is not None or not sys.stdin.isatty():
        text = args.message if args.message is not None else sys.stdin.read().rstrip("\r\n")
        if not text.strip():
            raise ScratchError("the message is empty; give --message TEXT or text on standard input")
        _answer(session, text, interactive=False)
        return 0
    print(
        f"chat with {args.ckpt} ({model.num_params():,} parameters, context {model.config.context_length} "
        "tokens); /help lists the commands, Ctrl-D or /quit leaves"
    )
    return _converse(session)


def _answer(session, text: str, *, interactive: bool) -> None:
    """Stream the reply to `text`. However it ends (Ctrl-C too), the history keeps what it said."""
    reply = session.reply(text)
    if reply.notice:
        print(reply.notice, file=sys.stdout if interactive else sys.stderr)
    out = sys.stdout
    if interactive:
        out.write(REPLY)
    try:
        for piece in reply:
            out.write(piece)
            out.flush()
    finally:
        reply.close()
    out.write("\n")
    out.flush()


def _converse(session) -> int:
    import readline  # noqa: F401  (line editing and history for input(), only in a terminal)

    while True:
        try:
            line = input(PROMPT)
        except EOFError:  # Ctrl-D
            print()
            return 0
        except KeyboardInterrupt:  # at the prompt, as in a shell: drop the line
            print("\n(Ctrl-D or /quit leaves)")
            continue
        if not line.strip():
            continue
        try:
            if line.startswith("/"):
                if _command(session, line):
                    return 0
            else:
                _answer(session, line, interactive=True)
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the session
            print(" [stopped]")
        except ScratchError as e:  # a bad /load file, a character the tokenizer lacks: the session goes on
            print(f"scratchlm: error: {e}", file=sys.stderr)
        except OSError as e:  # /save into a folder that cannot be written, say
            print(f"scratchlm: error: {describe_io_error(e)}", file=sys.stderr)


def _command(session, line: str) -> bool:
    """Run one /command; True when the session should end."""
    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/exit"):
        return True
    if name == "/help":
        print(COMMANDS)
    elif name == "/reset":
        session.reset()
        print("(conversation cleared)")
    elif name == "/system":
        session.set_system(rest or None)
        print("(system message set)" if rest else "(system message removed)")
    elif name in ("/save", "/load"):
        if not rest:
            raise ScratchError(f"{name} needs a file name: {name} FILE")
        if name == "/save":
            session.save(rest)
            print(f"(saved {_messages(session)} to {rest})")
        else:
            session.load(rest)
            print(f"(loaded {_messages(session)} from {rest})")
    else:
        raise ScratchError(f"unknown command {name}; /help lists the commands")
    return False


def _messages(session) -> str:
    n = len(session.history)
    return f"{n} message{'s' * (n != 1)}"
