"""Text prompts of about the right token count, for servers that only take text (chat endpoints).

Each token id maps to one word of WORDS (id modulo the list). The words are short, common,
lower-case English words; BPE tokenizers of the Llama, Qwen, Mistral and SmolLM families encode
" word" (leading space) as ONE token for nearly all of them, so a prompt of n ids becomes text of
about n tokens (within a few percent). Servers report the exact count in `usage.prompt_tokens`,
which the client records instead of the estimate when present.
"""

from __future__ import annotations

from collections.abc import Sequence

WORDS = tuple(
    """
    the of and to in is it you that he was for on are with as his they be at one have this from
    or had by word but what some we can out other were all there when up use your how said an
    each she which do their time if will way about many then them write would like so these her
    long make thing see him two has look more day could go come did number sound no most people
    my over know water than call first who may down side been now find any new work part take
    get place made live where after back little only round man year came show every good me give
    our under name very through just form sentence great think say help low line differ turn
    cause much mean before move right boy old too same tell does set three want air well also
    play small end put home read hand port large spell add even land here must big high such
    follow act why ask men change went light kind off need house picture try us again animal
    point mother world near build self earth father head stand own page should country found
    answer school grow study still learn plant cover food sun four between state keep eye never
    last let thought city tree cross farm hard start might story saw far sea draw left late run
    while press close night real life few north open seem together next white children begin got
    walk example ease paper group always music those both mark often letter until mile river car
    feet care second book carry took science eat room friend began idea fish mountain stop once
    base hear horse cut sure watch color face wood main enough plain girl usual young ready
    above ever red list though feel talk bird soon body dog family direct
    """.split()  # noqa: SIM905  (a word list reads better as text)
)


def ids_to_text(token_ids: Sequence[int]) -> str:
    """Text of about len(token_ids) tokens; the same ids always give the same text."""
    return "".join(" " + WORDS[i % len(WORDS)] for i in token_ids).lstrip()
