"""The Captions tab: a prepared dataset's segments (genre, caption, duration, a player for the
chosen one), filters ("no caption", "unknown", a genre, text), a page at a time; edit one caption,
or find-and-replace across a genre. Saves go to the ``.txt`` and the ``.json`` (``studio_captions``).

API (gradio_client): ``/captions_datasets``, ``/captions_list``, ``/caption_select``,
``/caption_save``, ``/caption_replace``.
"""
from __future__ import annotations

import typing as tp

from . import studio_captions as sc
from . import studio_data as sd
from .tab_data import guarded


def build_captions_tab(app) -> None:
    import gradio as gr

    root = app.data_root

    def datasets() -> tp.List[str]:
        return sd.choices_or_none(sd.dataset_choices, root)

    def on_datasets():
        return gr.Dropdown(choices=datasets())

    def listing(dataset, which, genre, search, page):
        """(table rows, page line, genre filter update, replace-genre update, page)."""
        folder = sc.dataset_folder(root, dataset)
        segments = sc.load_segments(folder)
        genres = sc.genres_of(segments)
        picked = sc.filter_segments(segments, which or "all", genre or sc.ALL_GENRES, search or "")
        rows, page, pages = sc.page_of(picked, int(page or 1))
        line = f"{len(picked)} of {len(segments)} segments; page {page} of {pages}"
        genre = genre if genre in genres else sc.ALL_GENRES
        return ([s.row() for s in rows], line, gr.Dropdown(choices=[sc.ALL_GENRES, *genres], value=genre),
                gr.Dropdown(choices=genres), page)

    def on_list(dataset, which, genre, search, page):
        return listing(dataset, which, genre, search, page)

    def on_page(dataset, which, genre, search, page, step):
        return listing(dataset, which, genre, search, int(page or 1) + step)

    def on_select(dataset, segment):
        """(caption, audio) of one segment."""
        return sc.segment_caption(root, dataset, segment), sc.segment_audio(root, dataset, segment)

    def on_row(dataset, table, evt):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            segment = str(table.iloc[row, 0]) if hasattr(table, "iloc") else str(table["data"][row][0])
        except (IndexError, KeyError, TypeError):
            return gr.update(), gr.update(), gr.update()
        caption, audio = on_select(dataset, segment)
        return segment, caption, audio

    # Gradio finds the event argument by its annotation: a real class (this module's annotations are strings).
    on_row.__annotations__["evt"] = gr.SelectData

    def on_save(dataset, segment, caption, which, genre, search, page):
        saved = sc.set_caption(root, dataset, segment, caption)
        return (f"Saved the caption of `{segment}`.", saved, *listing(dataset, which, genre, search, page))

    def on_replace(dataset, genre, find, replace, which, genre_filter, search, page):
        count = sc.replace_in_genre(root, dataset, genre, find, replace or "")
        return (f"Changed {count} caption(s) in {genre}.", *listing(dataset, which, genre_filter, search, page))

    gr.Markdown("Review and edit the captions the model will learn from. A caption is saved to the segment's "
                "`.txt` and `.json`; the trainer reads it from there.")
    with gr.Row():
        dataset = gr.Dropdown(choices=datasets(), value=None, label="Prepared dataset", elem_id="captions-dataset",
                              scale=3, allow_custom_value=True)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100, elem_id="captions-refresh")
    with gr.Row():
        which = gr.Radio(list(sc.FILTERS), value="all", label="Show", elem_id="captions-filter")
        genre = gr.Dropdown(choices=[sc.ALL_GENRES], value=sc.ALL_GENRES, label="Genre", elem_id="captions-genre",
                            allow_custom_value=True)
        search = gr.Textbox(label="Caption or name contains", max_length=sc.MAX_FIND_CHARS, elem_id="captions-search")
    table = gr.Dataframe(headers=sc.COLUMNS, interactive=False, wrap=True, elem_id="captions-table",
                         label="Segments (click a row to edit it)")
    with gr.Row():
        prev_page = gr.Button("Previous page", size="sm")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="captions-page")
        next_page = gr.Button("Next page", size="sm")
        page_line = gr.Markdown(elem_id="captions-count")
    with gr.Row():
        with gr.Column(scale=3):
            segment = gr.Textbox(label="Segment", max_length=400, elem_id="captions-segment")
            caption = gr.Textbox(label="Caption", lines=2, max_length=sc.MAX_CAPTION_CHARS, elem_id="captions-text")
            save = gr.Button("Save caption", variant="primary", elem_id="captions-save")
        audio = gr.Audio(label="Segment", type="numpy", interactive=False, elem_id="captions-audio", scale=2)
    note = gr.Markdown(elem_id="captions-note")
    with gr.Accordion("Find and replace in one genre", open=False):
        with gr.Row():
            replace_genre = gr.Dropdown(choices=[], label="Genre", elem_id="captions-replace-genre",
                                        allow_custom_value=True)
            find = gr.Textbox(label="Find", max_length=sc.MAX_FIND_CHARS, elem_id="captions-find")
            replace = gr.Textbox(label="Replace with", max_length=sc.MAX_FIND_CHARS, elem_id="captions-replace")
        replace_button = gr.Button("Replace in all captions of the genre", elem_id="captions-replace-button")

    filters = [dataset, which, genre, search, page]
    listed = [table, page_line, genre, replace_genre, page]
    dataset.focus(guarded(app, on_datasets), outputs=dataset, api_visibility="private", queue=False)  # new ones since the page loaded
    refresh.click(guarded(app, on_datasets), outputs=dataset, api_name="captions_datasets", queue=False)
    for trigger in (dataset.change, which.change, genre.change, search.submit):
        trigger(guarded(app, on_list), inputs=filters, outputs=listed, api_visibility="private")
    show = gr.Button("Show", size="sm", visible=False)
    show.click(guarded(app, on_list), inputs=filters, outputs=listed, api_name="captions_list")
    prev_page.click(guarded(app, lambda *a: on_page(*a, -1)), inputs=filters, outputs=listed,
                    api_visibility="private")
    next_page.click(guarded(app, lambda *a: on_page(*a, 1)), inputs=filters, outputs=listed,
                    api_visibility="private")
    page.submit(guarded(app, on_list), inputs=filters, outputs=listed, api_visibility="private")
    table.select(guarded(app, on_row), inputs=[dataset, table], outputs=[segment, caption, audio],
                 api_visibility="private")
    segment.submit(guarded(app, on_select), inputs=[dataset, segment], outputs=[caption, audio],
                   api_name="caption_select")
    save.click(guarded(app, on_save), inputs=[dataset, segment, caption, which, genre, search, page],
               outputs=[note, caption, *listed], api_name="caption_save", concurrency_limit=1,
               concurrency_id="studio-jobs")
    replace_button.click(guarded(app, on_replace),
                         inputs=[dataset, replace_genre, find, replace, which, genre, search, page],
                         outputs=[note, *listed], api_name="caption_replace", concurrency_limit=1,
                         concurrency_id="studio-jobs")
