/*
 * caption: captions an image with the demo model built into the library, then (with a
 * question) answers it in a chat, streaming the answer as it is generated.
 *
 *   cc -I bindings/c/include bindings/c/examples/caption.c target/release/libblip2_c.a \
 *      -lpthread -ldl -lm -o caption
 *   ./caption examples/circle_and_triangle.png "what color is the triangle?"
 *
 * prints the caption on the first line and "answer: ..." on the second. Exit status: 0,
 * or the failing call's Blip2Status with its message on stderr.
 */
#include <stdio.h>

#include "blip2.h"

static void print_piece(const char *piece, void *user) {
    size_t *pieces = (size_t *)user;
    fputs(piece, stdout);
    fflush(stdout);
    *pieces += 1;
}

static int fail(const char *what, Blip2Status status) {
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)status, blip2_last_error());
    return (int)status;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s IMAGE [QUESTION]\n", argv[0]);
        return 64;
    }
    Blip2Model *model = NULL;
    Blip2Image *image = NULL;
    Blip2Chat *chat = NULL;
    char *caption = NULL;
    int rc = 0;
    Blip2Status st;

    /* NULL directory: the embedded demo model; NULL device and dtype: "auto" and "f32". */
    if ((st = blip2_model_load(NULL, NULL, NULL, &model)) != BLIP2_STATUS_OK) {
        rc = fail("blip2_model_load", st);
        goto done;
    }
    if ((st = blip2_image_load(argv[1], &image)) != BLIP2_STATUS_OK) {
        rc = fail("blip2_image_load", st);
        goto done;
    }
    if ((st = blip2_caption(model, image, NULL, &caption)) != BLIP2_STATUS_OK) {
        rc = fail("blip2_caption", st);
        goto done;
    }
    printf("%s\n", caption);

    if (argc > 2) {
        size_t pieces = 0;
        if ((st = blip2_chat_new(model, image, &chat)) != BLIP2_STATUS_OK) {
            rc = fail("blip2_chat_new", st);
            goto done;
        }
        printf("answer: ");
        st = blip2_chat_ask_stream(chat, argv[2], "{\"max_new_tokens\": 10}", print_piece,
                                   &pieces, NULL);
        printf("\n");
        if (st != BLIP2_STATUS_OK) {
            rc = fail("blip2_chat_ask_stream", st);
            goto done;
        }
        fprintf(stderr, "streamed in %zu pieces\n", pieces);
    }

done:
    blip2_string_free(caption);
    blip2_chat_free(chat);
    blip2_image_free(image);
    blip2_model_free(model);
    return rc;
}
