/* UTM parameters on the links of a post, so traffic from each post can be attributed to its
 * channel and campaign (README "Links and UTM parameters"). */
#ifndef CALPOST_UTM_H
#define CALPOST_UTM_H

#include <stdbool.h>
#include <stddef.h>

struct cp_utm {
  const char *source;   /* utm_source: the channel name, or the configured value */
  const char *medium;   /* utm_medium: "social" unless configured */
  const char *campaign; /* utm_campaign: the post's campaign; NULL or "": not added */
  const char *content;  /* utm_content: the post id, so each post is told apart; may be NULL */
  /* Only links to these hosts (and their subdomains) are tagged; none: every link. */
  const char *const *domains;
  size_t n_domains;
};

/* Returns a new copy of text (malloc'd, into *out) in which every http(s) link found by
 * cp_text_find_url that points to one of u->domains gets the utm_* parameters u gives, appended
 * to its query with libcurl's URL API (existing utm_* parameters of a link are kept, a fragment
 * stays last). Returns 0, or CP_ENOMEM. */
int cp_utm_apply(const char *text, const struct cp_utm *u, char **out);

#endif
