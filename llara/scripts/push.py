"""``llara push``: upload a folder written by `llara export` to the Hugging Face Hub."""

from __future__ import annotations

import argparse
import sys


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llara push",
        description=(
            "Upload an exported LLaRA repository folder (`llara export`) to the Hugging Face Hub with "
            "huggingface_hub's upload_folder. Without a token, in offline mode (HF_HUB_OFFLINE) or without network "
            "it stops within seconds with a clear message; the local folder is never modified."
        ),
    )
    parser.add_argument("--dir", required=True, help="folder written by `llara export`")
    parser.add_argument("--repo", required=True, help="target model repository 'org/name' (created if missing)")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the `hf auth login` token)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)

    from hub_card.push import PushError, push_folder
    from llara.cli_boundary import describe

    try:
        url = push_folder(
            args.dir,
            args.repo,
            token=args.token,
            private=args.private or None,
            revision=args.revision,
            commit_message=args.message,
            create_pr=args.create_pr,
        )
    except (FileNotFoundError, ValueError, PushError) as error:
        print(f"llara push: error: {describe(error)}", file=sys.stderr)
        return 1
    print(f"pushed {args.dir} to {args.repo}: {url}")
    return 0


if __name__ == "__main__":
    from llara.cli_boundary import script_entry

    script_entry("push", main)
