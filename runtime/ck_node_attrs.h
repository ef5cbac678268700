/*
 * A node's optional attributes, declared once.
 *
 * Each X(name, tag, flags, env, json) below becomes, with nothing else to
 * write by hand:
 *   - a field of struct ck_node_info (char *name, "" when unset) and of
 *     struct ck_cmd_node (struct ck_str name, empty when unset);
 *   - a trailing field of NODE_UPSERT and of each node of a CKS3 snapshot,
 *     tag `tag` (ck_state.h: older readers skip tags they do not know, so
 *     adding one needs no new command or snapshot version), at most
 *     CK_MAX_STR bytes without NUL, checked where it is decoded;
 *   - the key `name` of core.encode_node's argument and of node:view()'s
 *     entries, and an entry of core.NODE_ATTRS (lck_node.c), from which the
 *     Lua side derives the option and environment variable `env` (for
 *     CK_ATTR_OPERATOR), the join request's field, the view's and the JSON
 *     field `json`, snapshots, and comparisons (clusterkit.attrs).
 *
 * Flags:
 *   CK_ATTR_OPERATOR  set by the operator (an option, env var `env`); the
 *                     node sends it when it joins.
 *   CK_ATTR_REPORTED  reported by the node itself (its build), recorded by
 *                     the leader.
 *   CK_ATTR_DOMAIN    a placement domain within the zone: the owners of a
 *                     partition that share a zone spread over its values
 *                     (ck_place.h). One attribute at most.
 *
 * Values travel only from feature level 2 on (version 2 commands): the
 * leader leaves them out of entries before.
 */
#ifndef CK_NODE_ATTRS_H
#define CK_NODE_ATTRS_H

#define CK_ATTR_OPERATOR 1u
#define CK_ATTR_REPORTED 2u
#define CK_ATTR_DOMAIN 4u

/* X(name, tag, flags, env, json) */
#define CK_NODE_ATTRS(X)                           \
    X(build, 1, CK_ATTR_REPORTED, NULL, "version") \
    X(rack, 2, CK_ATTR_OPERATOR | CK_ATTR_DOMAIN, "RACK", "rack")

#endif /* CK_NODE_ATTRS_H */
