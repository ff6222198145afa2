/*
 * conformance.c: PKCS#11 conformance checks for libquill_hsm_sim.so, calling the module through
 * its function lists (C_GetInterface / C_GetFunctionList), not through any wrapper library.
 *
 * Built and run by `make c-conformance` (part of `make test`):
 *   cc -std=c11 -Wall -Wextra -Werror -o p11-conformance conformance.c -ldl
 *   QUILL_HSM_DIR=<empty dir> ./p11-conformance <module.so>
 *
 * Each check names the call and the exact return code the standard (PKCS#11 Base 3.0) asks
 * for; issue 14 lists the violations this program guards against. One vendor mechanism
 * (CKM_QUILL_TR31_TRANSLATE, hsm-sim/README.md) is driven through the function list too, with
 * the return codes the README documents. The types below are the standard's, written out here
 * so that the program needs no header: the function list is the version followed by the function
 * pointers in the standard's order.
 */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef unsigned char CK_BYTE;
typedef CK_ULONG CK_HANDLE;
typedef struct { CK_BYTE major, minor; } CK_VERSION;
typedef struct { CK_ULONG type; void *pValue; CK_ULONG ulValueLen; } CK_ATTRIBUTE;
typedef struct { CK_ULONG mechanism; void *pParameter; CK_ULONG ulParameterLen; } CK_MECHANISM;
typedef struct { CK_BYTE *pInterfaceName; void *pFunctionList; CK_ULONG flags; } CK_INTERFACE;
typedef struct {
    CK_VERSION cryptokiVersion;
    CK_BYTE manufacturerID[32];
    CK_ULONG flags;
    CK_BYTE libraryDescription[32];
    CK_VERSION libraryVersion;
} CK_INFO;
typedef struct { void *pData; CK_ULONG ulLen; } CK_KEY_DERIVATION_STRING_DATA;
typedef struct { CK_ULONG ulMinKeySize, ulMaxKeySize, flags; } CK_MECHANISM_INFO;
typedef void (*FN)(void);
typedef struct { CK_VERSION version; FN f[92]; } FUNCTION_LIST; /* 3.0: 92 functions, 2.40: 68 */

enum {
    F_Initialize, F_Finalize, F_GetInfo, F_GetFunctionList, F_GetSlotList, F_GetSlotInfo,
    F_GetTokenInfo, F_GetMechanismList, F_GetMechanismInfo, F_InitToken, F_InitPIN, F_SetPIN,
    F_OpenSession, F_CloseSession, F_CloseAllSessions, F_GetSessionInfo, F_GetOperationState,
    F_SetOperationState, F_Login, F_Logout, F_CreateObject, F_CopyObject, F_DestroyObject,
    F_GetObjectSize, F_GetAttributeValue, F_SetAttributeValue, F_FindObjectsInit, F_FindObjects,
    F_FindObjectsFinal, F_EncryptInit, F_Encrypt, F_EncryptUpdate, F_EncryptFinal, F_DecryptInit,
    F_Decrypt, F_DecryptUpdate, F_DecryptFinal, F_DigestInit, F_Digest, F_DigestUpdate,
    F_DigestKey, F_DigestFinal, F_SignInit, F_Sign, F_SignUpdate, F_SignFinal, F_SignRecoverInit,
    F_SignRecover, F_VerifyInit, F_Verify, F_VerifyUpdate, F_VerifyFinal, F_VerifyRecoverInit,
    F_VerifyRecover, F_DigestEncryptUpdate, F_DecryptDigestUpdate, F_SignEncryptUpdate,
    F_DecryptVerifyUpdate, F_GenerateKey, F_GenerateKeyPair, F_WrapKey, F_UnwrapKey, F_DeriveKey,
    F_SeedRandom, F_GenerateRandom, F_GetFunctionStatus, F_CancelFunction, F_WaitForSlotEvent,
    /* 3.0 */
    F_GetInterfaceList, F_GetInterface, F_LoginUser, F_SessionCancel, F_MessageEncryptInit,
    F_EncryptMessage, F_EncryptMessageBegin, F_EncryptMessageNext, F_MessageEncryptFinal,
    F_MessageDecryptInit, F_DecryptMessage, F_DecryptMessageBegin, F_DecryptMessageNext,
    F_MessageDecryptFinal, F_MessageSignInit, F_SignMessage, F_SignMessageBegin, F_SignMessageNext,
    F_MessageSignFinal, F_MessageVerifyInit, F_VerifyMessage, F_VerifyMessageBegin,
    F_VerifyMessageNext, F_MessageVerifyFinal,
};

/* Constants (PKCS#11 3.0 pkcs11t.h). */
#define CKR_OK 0x0UL
#define CKR_ARGUMENTS_BAD 0x7UL
#define CKR_NO_EVENT 0x8UL
#define CKR_ATTRIBUTE_READ_ONLY 0x10UL
#define CKR_ATTRIBUTE_TYPE_INVALID 0x12UL
#define CKR_ATTRIBUTE_VALUE_INVALID 0x13UL
#define CKR_DATA_INVALID 0x20UL
#define CKR_DATA_LEN_RANGE 0x21UL
#define CKR_ENCRYPTED_DATA_LEN_RANGE 0x41UL
#define CKR_FUNCTION_NOT_SUPPORTED 0x54UL
#define CKR_MECHANISM_PARAM_INVALID 0x71UL
#define CKR_OPERATION_ACTIVE 0x90UL
#define CKR_OPERATION_NOT_INITIALIZED 0x91UL
#define CKR_SESSION_HANDLE_INVALID 0xB3UL
#define CKR_SIGNATURE_INVALID 0xC0UL
#define CKR_TEMPLATE_INCOMPLETE 0xD0UL
#define CKR_WRAPPED_KEY_INVALID 0x110UL
#define CKR_USER_NOT_LOGGED_IN 0x101UL
#define CKR_BUFFER_TOO_SMALL 0x150UL

#define CKF_HW 1UL
#define CKF_DONT_BLOCK 1UL
#define CKF_RW_SESSION 2UL
#define CKF_SERIAL_SESSION 4UL
#define CKF_ENCRYPT 0x100UL
#define CKU_SO 0UL
#define CKU_USER 1UL

#define CKO_DATA 0UL
#define CKO_PUBLIC_KEY 2UL
#define CKO_PRIVATE_KEY 3UL
#define CKO_SECRET_KEY 4UL
#define CKK_RSA 0UL
#define CKK_RC4 0x12UL
#define CKK_DES2 0x14UL
#define CKK_AES 0x1FUL

#define CKA_CLASS 0x0UL
#define CKA_TOKEN 0x1UL
#define CKA_PRIVATE 0x2UL
#define CKA_LABEL 0x3UL
#define CKA_UNIQUE_ID 0x4UL
#define CKA_VALUE 0x11UL
#define CKA_CHECK_VALUE 0x90UL
#define CKA_KEY_TYPE 0x100UL
#define CKA_SENSITIVE 0x103UL
#define CKA_ENCRYPT 0x104UL
#define CKA_DECRYPT 0x105UL
#define CKA_WRAP 0x106UL
#define CKA_UNWRAP 0x107UL
#define CKA_SIGN 0x108UL
#define CKA_VERIFY 0x10AUL
#define CKA_DERIVE 0x10CUL
#define CKA_MODULUS_BITS 0x121UL
#define CKA_PUBLIC_EXPONENT 0x122UL
#define CKA_VALUE_LEN 0x161UL
#define CKA_EXTRACTABLE 0x162UL
#define CKA_UNDEFINED 0x7FFFFFF0UL /* no standard attribute has this number */

#define CKM_RSA_PKCS_KEY_PAIR_GEN 0x0UL
#define CKM_DES2_KEY_GEN 0x130UL
#define CKM_DES3_ECB 0x132UL
#define CKM_DES3_MAC 0x134UL
#define CKM_SHA256 0x250UL
#define CKM_AES_KEY_GEN 0x1080UL
#define CKM_DES3_ECB_ENCRYPT_DATA 0x1102UL
#define CKM_AES_KEY_WRAP 0x2109UL
/* Quill's vendor mechanisms (hsm-sim/README.md). */
#define CKM_QUILL_TR31_WRAP 0xD1550060UL
#define CKM_QUILL_TR31_UNWRAP 0xD1550061UL
#define CKM_QUILL_TR31_TRANSLATE 0xD1550062UL

typedef CK_RV (*GetInterface_t)(CK_BYTE *, CK_VERSION *, CK_INTERFACE **, CK_ULONG);
typedef CK_RV (*GetInterfaceList_t)(CK_INTERFACE *, CK_ULONG *);
typedef CK_RV (*GetFunctionList_t)(FUNCTION_LIST **);
typedef CK_RV (*Initialize_t)(void *);
typedef CK_RV (*GetInfo_t)(CK_INFO *);
typedef CK_RV (*WaitForSlotEvent_t)(CK_ULONG, CK_ULONG *, void *);
typedef CK_RV (*GetMechanismInfo_t)(CK_ULONG, CK_ULONG, CK_MECHANISM_INFO *);
typedef CK_RV (*InitToken_t)(CK_ULONG, CK_BYTE *, CK_ULONG, CK_BYTE *);
typedef CK_RV (*InitPIN_t)(CK_HANDLE, CK_BYTE *, CK_ULONG);
typedef CK_RV (*OpenSession_t)(CK_ULONG, CK_ULONG, void *, void *, CK_HANDLE *);
typedef CK_RV (*Session_t)(CK_HANDLE);
typedef CK_RV (*Login_t)(CK_HANDLE, CK_ULONG, CK_BYTE *, CK_ULONG);
typedef CK_RV (*CreateObject_t)(CK_HANDLE, CK_ATTRIBUTE *, CK_ULONG, CK_HANDLE *);
typedef CK_RV (*Attrs_t)(CK_HANDLE, CK_HANDLE, CK_ATTRIBUTE *, CK_ULONG);
typedef CK_RV (*FindInit_t)(CK_HANDLE, CK_ATTRIBUTE *, CK_ULONG);
typedef CK_RV (*Find_t)(CK_HANDLE, CK_HANDLE *, CK_ULONG, CK_ULONG *);
typedef CK_RV (*OpInit_t)(CK_HANDLE, CK_MECHANISM *, CK_HANDLE);
typedef CK_RV (*DigestInit_t)(CK_HANDLE, CK_MECHANISM *);
typedef CK_RV (*OneShot_t)(CK_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG *);
typedef CK_RV (*Final_t)(CK_HANDLE, CK_BYTE *, CK_ULONG *);
typedef CK_RV (*DataIn_t)(CK_HANDLE, CK_BYTE *, CK_ULONG);
typedef CK_RV (*Verify_t)(CK_HANDLE, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG);
typedef CK_RV (*DigestKey_t)(CK_HANDLE, CK_HANDLE);
typedef CK_RV (*GenerateKey_t)(CK_HANDLE, CK_MECHANISM *, CK_ATTRIBUTE *, CK_ULONG, CK_HANDLE *);
typedef CK_RV (*GenerateKeyPair_t)(CK_HANDLE, CK_MECHANISM *, CK_ATTRIBUTE *, CK_ULONG, CK_ATTRIBUTE *,
                                   CK_ULONG, CK_HANDLE *, CK_HANDLE *);
typedef CK_RV (*WrapKey_t)(CK_HANDLE, CK_MECHANISM *, CK_HANDLE, CK_HANDLE, CK_BYTE *, CK_ULONG *);
typedef CK_RV (*UnwrapKey_t)(CK_HANDLE, CK_MECHANISM *, CK_HANDLE, CK_BYTE *, CK_ULONG, CK_ATTRIBUTE *,
                             CK_ULONG, CK_HANDLE *);
typedef CK_RV (*DeriveKey_t)(CK_HANDLE, CK_MECHANISM *, CK_HANDLE, CK_ATTRIBUTE *, CK_ULONG, CK_HANDLE *);
typedef CK_RV (*SessionCancel_t)(CK_HANDLE, CK_ULONG);
typedef CK_RV (*MessageInit_t)(CK_HANDLE, CK_MECHANISM *, CK_HANDLE);
typedef CK_RV (*LoginUser_t)(CK_HANDLE, CK_ULONG, CK_BYTE *, CK_ULONG, CK_BYTE *, CK_ULONG);

static FUNCTION_LIST *F;
#define CALL(type, idx) ((type)F->f[idx])

static int passed, failed;

static void check(const char *what, CK_RV got, CK_RV want) {
    if (got == want) {
        passed++;
        printf("ok   %s -> 0x%lX\n", what, got);
    } else {
        failed++;
        printf("FAIL %s -> 0x%lX, want 0x%lX\n", what, got, want);
    }
}

static void expect(const char *what, int ok) {
    if (ok) {
        passed++;
        printf("ok   %s\n", what);
    } else {
        failed++;
        printf("FAIL %s\n", what);
    }
}

/* A fatal step: the rest makes no sense without it. */
static void must(const char *what, CK_RV rv) {
    if (rv != CKR_OK) {
        printf("FATAL %s -> 0x%lX\n", what, rv);
        exit(2);
    }
}

static CK_BYTE TRUE_ = 1, FALSE_ = 0;
static CK_BYTE SO_PIN[] = "12345678", USER_PIN[] = "1234";
static CK_BYTE DES2_VALUE[16] = {0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF,
                                 0xFE, 0xDC, 0xBA, 0x98, 0x76, 0x54, 0x32, 0x10};
static const CK_BYTE SHA256_A[32] = {0xca, 0x97, 0x81, 0x12, 0xca, 0x1b, 0xbd, 0xca, 0xfa, 0xc2, 0x31,
                                     0xb3, 0x9a, 0x23, 0xdc, 0x4d, 0xa7, 0x86, 0xef, 0xf8, 0x14, 0x7c,
                                     0x4e, 0x72, 0xb9, 0x80, 0x77, 0x85, 0xaf, 0xee, 0x48, 0xbb};
static const CK_BYTE SHA256_BCD[32] = {0xa6, 0xb0, 0xf9, 0x0d, 0x2a, 0xc2, 0xb8, 0xd1, 0xf2, 0x50, 0xc6,
                                       0x87, 0x30, 0x1a, 0xef, 0x13, 0x20, 0x49, 0xe9, 0x01, 0x6d, 0xf9,
                                       0x36, 0x68, 0x0e, 0x81, 0xfa, 0x7b, 0xc7, 0xd8, 0x1d, 0x70};
static const CK_BYTE SHA256_AB[32] = {0xfb, 0x8e, 0x20, 0xfc, 0x2e, 0x4c, 0x3f, 0x24, 0x8c, 0x60, 0xc3,
                                      0x9b, 0xd6, 0x52, 0xf3, 0xc1, 0x34, 0x72, 0x98, 0xbb, 0x97, 0x7b,
                                      0x8b, 0x4d, 0x59, 0x03, 0xb8, 0x50, 0x55, 0x62, 0x06, 0x03};

#define N(a) (sizeof(a) / sizeof((a)[0]))
#define ATTR(t, v) {t, (void *)&(v), sizeof(v)}

static CK_ULONG cls_secret = CKO_SECRET_KEY, cls_data = CKO_DATA, kt_des2 = CKK_DES2, kt_rc4 = CKK_RC4;

/* A session DES2 key with the given usages (1 = true) for encrypt/decrypt/sign/verify/derive/wrap/unwrap. */
static CK_HANDLE des2_key(CK_HANDLE s, int enc, int sign, int derive, int wrap) {
    CK_ATTRIBUTE t[] = {
        ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_des2), ATTR(CKA_TOKEN, FALSE_),
        {CKA_VALUE, DES2_VALUE, sizeof DES2_VALUE},
        {CKA_ENCRYPT, enc ? &TRUE_ : &FALSE_, 1}, {CKA_DECRYPT, enc ? &TRUE_ : &FALSE_, 1},
        {CKA_SIGN, sign ? &TRUE_ : &FALSE_, 1}, {CKA_VERIFY, sign ? &TRUE_ : &FALSE_, 1},
        {CKA_DERIVE, derive ? &TRUE_ : &FALSE_, 1},
        {CKA_WRAP, wrap ? &TRUE_ : &FALSE_, 1}, {CKA_UNWRAP, wrap ? &TRUE_ : &FALSE_, 1},
        ATTR(CKA_EXTRACTABLE, TRUE_),
    };
    CK_HANDLE h = 0;
    must("C_CreateObject(DES2 key)", CALL(CreateObject_t, F_CreateObject)(s, t, N(t), &h));
    return h;
}

static void interfaces(void *lib) {
    GetInterface_t gi = (GetInterface_t)dlsym(lib, "C_GetInterface");
    GetInterfaceList_t gl = (GetInterfaceList_t)dlsym(lib, "C_GetInterfaceList");
    GetFunctionList_t gf = (GetFunctionList_t)dlsym(lib, "C_GetFunctionList");
    if (!gi || !gl || !gf) {
        printf("FATAL the module does not export C_GetInterface, C_GetInterfaceList and C_GetFunctionList\n");
        exit(2);
    }
    CK_INTERFACE *iface = NULL;
    check("C_GetInterface(NULL, NULL) (default interface)", gi(NULL, NULL, &iface, 0), CKR_OK);
    expect("the default interface is \"PKCS 11\"", iface && strcmp((char *)iface->pInterfaceName, "PKCS 11") == 0);
    FUNCTION_LIST *v3 = iface ? (FUNCTION_LIST *)iface->pFunctionList : NULL;
    expect("the default function list is version 3.0", v3 && v3->version.major == 3 && v3->version.minor == 0);
    CK_VERSION want240 = {2, 40}, want30 = {3, 0}, want31 = {3, 1};
    CK_INTERFACE *i240 = NULL, *i30 = NULL, *i31 = NULL;
    check("C_GetInterface(\"PKCS 11\", 3.0)", gi((CK_BYTE *)"PKCS 11", &want30, &i30, 0), CKR_OK);
    expect("  gives the 3.0 list", i30 && i30->pFunctionList == (void *)v3);
    check("C_GetInterface(\"PKCS 11\", 2.40)", gi((CK_BYTE *)"PKCS 11", &want240, &i240, 0), CKR_OK);
    expect("  gives a 2.40 list", i240 && ((FUNCTION_LIST *)i240->pFunctionList)->version.major == 2 &&
                                      ((FUNCTION_LIST *)i240->pFunctionList)->version.minor == 40);
    check("C_GetInterface(\"PKCS 11\", 3.1) (not offered)", gi((CK_BYTE *)"PKCS 11", &want31, &i31, 0),
          CKR_ARGUMENTS_BAD);
    check("C_GetInterface(\"Vendor X\")", gi((CK_BYTE *)"Vendor X", NULL, &i31, 0), CKR_ARGUMENTS_BAD);
    CK_ULONG n = 0;
    check("C_GetInterfaceList(NULL, &n)", gl(NULL, &n), CKR_OK);
    expect("  two interfaces (3.0 and 2.40)", n == 2);
    CK_INTERFACE list[2];
    CK_ULONG one = 1;
    check("C_GetInterfaceList with room for one", gl(list, &one), CKR_BUFFER_TOO_SMALL);
    check("C_GetInterfaceList", gl(list, &n), CKR_OK);
    expect("  the first is the 3.0 list", list[0].pFunctionList == (void *)v3);
    FUNCTION_LIST *v2 = NULL;
    check("C_GetFunctionList", gf(&v2), CKR_OK);
    expect("  C_GetFunctionList still gives the 2.40 list", v2 && v2->version.major == 2 && v2->version.minor == 40);
    /* A module without the 3.0 list is tested through the one it has (3.0-only calls skipped). */
    F = (v3 && v3->version.major >= 3) ? v3 : v2;
    if (!F) {
        printf("FATAL no function list\n");
        exit(2);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s <pkcs11-module.so> (with QUILL_HSM_DIR set to an empty directory)\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 2;
    }
    printf("== PKCS#11 3.0 interface\n");
    interfaces(lib);

    must("C_Initialize", CALL(Initialize_t, F_Initialize)(NULL));
    CK_INFO info;
    check("C_GetInfo", CALL(GetInfo_t, F_GetInfo)(&info), CKR_OK);
    expect("  cryptokiVersion 3.0", info.cryptokiVersion.major == 3 && info.cryptokiVersion.minor == 0);
    CK_ULONG slot = 99;
    check("C_WaitForSlotEvent(CKF_DONT_BLOCK) with nothing changed",
          CALL(WaitForSlotEvent_t, F_WaitForSlotEvent)(CKF_DONT_BLOCK, &slot, NULL), CKR_NO_EVENT);
    if (F->version.major >= 3) {
        check("C_LoginUser (not supported)", CALL(LoginUser_t, F_LoginUser)(1, CKU_USER, USER_PIN, 4, NULL, 0),
              CKR_FUNCTION_NOT_SUPPORTED);
        check("C_MessageEncryptInit (not supported)", CALL(MessageInit_t, F_MessageEncryptInit)(1, NULL, 0),
              CKR_FUNCTION_NOT_SUPPORTED);
    } else {
        expect("the 3.0 function list (C_LoginUser, C_MessageEncryptInit ...)", 0);
    }

    CK_BYTE label[32];
    memset(label, ' ', sizeof label);
    memcpy(label, "conformance", 11);
    must("C_InitToken", CALL(InitToken_t, F_InitToken)(0, SO_PIN, 8, label));
    CK_HANDLE s = 0;
    must("C_OpenSession(RW)", CALL(OpenSession_t, F_OpenSession)(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    must("C_Login(SO)", CALL(Login_t, F_Login)(s, CKU_SO, SO_PIN, 8));
    must("C_InitPIN", CALL(InitPIN_t, F_InitPIN)(s, USER_PIN, 4));
    must("C_Logout", CALL(Session_t, F_Logout)(s));

    printf("== public token objects in an R/W public session (no login)\n");
    {
        CK_BYTE app[] = "conformance";
        CK_ATTRIBUTE data[] = {ATTR(CKA_CLASS, cls_data), ATTR(CKA_TOKEN, TRUE_), ATTR(CKA_PRIVATE, FALSE_),
                               {CKA_LABEL, app, 11}, {CKA_VALUE, app, 11}};
        CK_HANDLE h = 0;
        check("C_CreateObject(public token data object)", CALL(CreateObject_t, F_CreateObject)(s, data, N(data), &h),
              CKR_OK);
        CK_BYTE pub_label[] = "public-des2";
        CK_ATTRIBUTE key[] = {ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_des2), ATTR(CKA_TOKEN, TRUE_),
                              ATTR(CKA_PRIVATE, FALSE_), {CKA_LABEL, pub_label, 11},
                              {CKA_VALUE, DES2_VALUE, 16}, ATTR(CKA_ENCRYPT, TRUE_)};
        check("C_CreateObject(public token secret key)", CALL(CreateObject_t, F_CreateObject)(s, key, N(key), &h),
              CKR_OK);
        CK_ULONG bits = 1024;
        CK_BYTE e[] = {1, 0, 1};
        CK_MECHANISM gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
        CK_ATTRIBUTE pt[] = {ATTR(CKA_TOKEN, TRUE_), ATTR(CKA_PRIVATE, FALSE_), ATTR(CKA_MODULUS_BITS, bits),
                             {CKA_PUBLIC_EXPONENT, e, 3}, ATTR(CKA_VERIFY, TRUE_)};
        CK_ATTRIBUTE st[] = {ATTR(CKA_TOKEN, TRUE_), ATTR(CKA_PRIVATE, FALSE_), ATTR(CKA_SIGN, TRUE_)};
        CK_HANDLE hp = 0, hs = 0;
        check("C_GenerateKeyPair(public token key pair)",
              CALL(GenerateKeyPair_t, F_GenerateKeyPair)(s, &gen, pt, N(pt), st, N(st), &hp, &hs), CKR_OK);
        CK_ATTRIBUTE priv[] = {ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_des2), ATTR(CKA_TOKEN, TRUE_),
                               ATTR(CKA_PRIVATE, TRUE_), {CKA_VALUE, DES2_VALUE, 16}};
        check("C_CreateObject(private token key) without login",
              CALL(CreateObject_t, F_CreateObject)(s, priv, N(priv), &h), CKR_USER_NOT_LOGGED_IN);
        /* The public key is stored: another C_Initialize finds and uses it without a login. */
        must("C_Finalize", CALL(Initialize_t, F_Finalize)(NULL));
        must("C_Initialize again", CALL(Initialize_t, F_Initialize)(NULL));
        must("C_OpenSession(RW)", CALL(OpenSession_t, F_OpenSession)(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL,
                                                                     NULL, &s));
        CK_ATTRIBUTE find[] = {{CKA_LABEL, pub_label, 11}};
        CK_ULONG found = 0;
        must("C_FindObjectsInit", CALL(FindInit_t, F_FindObjectsInit)(s, find, 1));
        must("C_FindObjects", CALL(Find_t, F_FindObjects)(s, &h, 1, &found));
        must("C_FindObjectsFinal", CALL(Session_t, F_FindObjectsFinal)(s));
        expect("the public token key is found after a restart, without a login", found == 1);
        CK_MECHANISM ecb = {CKM_DES3_ECB, NULL, 0};
        CK_BYTE block[8] = {0}, out[8];
        CK_ULONG outl = sizeof out;
        check("C_EncryptInit with the stored public key (no login)", CALL(OpInit_t, F_EncryptInit)(s, &ecb, h), CKR_OK);
        check("C_Encrypt with it", CALL(OneShot_t, F_Encrypt)(s, block, 8, out, &outl), CKR_OK);
    }

    must("C_Login(user)", CALL(Login_t, F_Login)(s, CKU_USER, USER_PIN, 4));

    printf("== templates: attribute types, key types, key lengths\n");
    {
        CK_ULONG junk = 1;
        CK_HANDLE h = 0;
        CK_BYTE v[] = "x";
        CK_ATTRIBUTE data[] = {ATTR(CKA_CLASS, cls_data), {CKA_VALUE, v, 1}, ATTR(CKA_UNDEFINED, junk)};
        check("C_CreateObject with attribute type 0x7FFFFFF0", CALL(CreateObject_t, F_CreateObject)(s, data, N(data), &h),
              CKR_ATTRIBUTE_TYPE_INVALID);
        CK_ATTRIBUTE mod_on_secret[] = {ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_des2),
                                        {CKA_VALUE, DES2_VALUE, 16}, ATTR(CKA_MODULUS_BITS, junk)};
        check("C_CreateObject(secret key) with CKA_MODULUS_BITS",
              CALL(CreateObject_t, F_CreateObject)(s, mod_on_secret, N(mod_on_secret), &h), CKR_ATTRIBUTE_TYPE_INVALID);
        CK_ATTRIBUTE rc4[] = {ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_rc4), {CKA_VALUE, DES2_VALUE, 16}};
        check("C_CreateObject with CKA_KEY_TYPE CKK_RC4 (unsupported)",
              CALL(CreateObject_t, F_CreateObject)(s, rc4, N(rc4), &h), CKR_ATTRIBUTE_VALUE_INVALID);
        CK_ATTRIBUTE short_des2[] = {ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_des2), {CKA_VALUE, DES2_VALUE, 15}};
        check("C_CreateObject(DES2) with a 15-byte value",
              CALL(CreateObject_t, F_CreateObject)(s, short_des2, N(short_des2), &h), CKR_ATTRIBUTE_VALUE_INVALID);

        CK_MECHANISM aes_gen = {CKM_AES_KEY_GEN, NULL, 0};
        CK_ULONG len17 = 17, len16 = 16;
        CK_ATTRIBUTE aes17[] = {ATTR(CKA_VALUE_LEN, len17)};
        check("C_GenerateKey(AES) with CKA_VALUE_LEN 17", CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, aes17, 1, &h),
              CKR_ATTRIBUTE_VALUE_INVALID);
        check("C_GenerateKey(AES) without CKA_VALUE_LEN", CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, NULL, 0, &h),
              CKR_TEMPLATE_INCOMPLETE);
        CK_ATTRIBUTE aes_junk[] = {ATTR(CKA_VALUE_LEN, len16), ATTR(CKA_UNDEFINED, junk)};
        check("C_GenerateKey(AES) with attribute type 0x7FFFFFF0",
              CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, aes_junk, N(aes_junk), &h), CKR_ATTRIBUTE_TYPE_INVALID);
        CK_MECHANISM rsa_gen = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
        CK_ULONG bits = 1001, good_bits = 1024;
        CK_HANDLE hp, hs;
        CK_ATTRIBUTE bad_bits[] = {ATTR(CKA_MODULUS_BITS, bits)};
        check("C_GenerateKeyPair with CKA_MODULUS_BITS 1001",
              CALL(GenerateKeyPair_t, F_GenerateKeyPair)(s, &rsa_gen, bad_bits, 1, NULL, 0, &hp, &hs),
              CKR_ATTRIBUTE_VALUE_INVALID);
        CK_ATTRIBUTE ok_bits[] = {ATTR(CKA_MODULUS_BITS, good_bits)};
        CK_ATTRIBUTE priv_junk[] = {ATTR(CKA_UNDEFINED, junk)};
        check("C_GenerateKeyPair with 0x7FFFFFF0 in the private template",
              CALL(GenerateKeyPair_t, F_GenerateKeyPair)(s, &rsa_gen, ok_bits, 1, priv_junk, 1, &hp, &hs),
              CKR_ATTRIBUTE_TYPE_INVALID);

        /* Unwrap and derive templates. */
        CK_HANDLE kek = 0, key = 0;
        CK_ATTRIBUTE kek_t[] = {ATTR(CKA_VALUE_LEN, len16), ATTR(CKA_WRAP, TRUE_), ATTR(CKA_UNWRAP, TRUE_)};
        must("C_GenerateKey(AES KEK)", CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, kek_t, N(kek_t), &kek));
        CK_ATTRIBUTE key_t[] = {ATTR(CKA_VALUE_LEN, len16), ATTR(CKA_EXTRACTABLE, TRUE_)};
        must("C_GenerateKey(AES key)", CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, key_t, N(key_t), &key));
        CK_MECHANISM kw = {CKM_AES_KEY_WRAP, NULL, 0};
        CK_BYTE wrapped[64];
        CK_ULONG wl = sizeof wrapped;
        must("C_WrapKey", CALL(WrapKey_t, F_WrapKey)(s, &kw, kek, key, wrapped, &wl));
        CK_ULONG kt_aes = CKK_AES;
        CK_ATTRIBUTE un[] = {ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_aes), ATTR(CKA_UNDEFINED, junk)};
        check("C_UnwrapKey with 0x7FFFFFF0 in the template",
              CALL(UnwrapKey_t, F_UnwrapKey)(s, &kw, kek, wrapped, wl, un, N(un), &h), CKR_ATTRIBUTE_TYPE_INVALID);
        CK_HANDLE base = des2_key(s, 0, 0, 1, 0);
        CK_BYTE y[16] = {0};
        CK_KEY_DERIVATION_STRING_DATA p = {y, 16};
        CK_MECHANISM derive = {CKM_DES3_ECB_ENCRYPT_DATA, &p, sizeof p};
        CK_ATTRIBUTE dt[] = {ATTR(CKA_CLASS, cls_secret), ATTR(CKA_KEY_TYPE, kt_des2), ATTR(CKA_UNDEFINED, junk)};
        check("C_DeriveKey with 0x7FFFFFF0 in the template",
              CALL(DeriveKey_t, F_DeriveKey)(s, &derive, base, dt, N(dt), &h), CKR_ATTRIBUTE_TYPE_INVALID);

        printf("== CKA_UNIQUE_ID\n");
        CK_BYTE uid1[64], uid2[64];
        CK_ATTRIBUTE g1[] = {{CKA_UNIQUE_ID, uid1, sizeof uid1}}, g2[] = {{CKA_UNIQUE_ID, uid2, sizeof uid2}};
        check("C_GetAttributeValue(CKA_UNIQUE_ID) of a key", CALL(Attrs_t, F_GetAttributeValue)(s, kek, g1, 1), CKR_OK);
        check("C_GetAttributeValue(CKA_UNIQUE_ID) of another", CALL(Attrs_t, F_GetAttributeValue)(s, key, g2, 1), CKR_OK);
        expect("  both non-empty and different",
               g1[0].ulValueLen > 0 && g2[0].ulValueLen > 0 &&
                   (g1[0].ulValueLen != g2[0].ulValueLen || memcmp(uid1, uid2, g1[0].ulValueLen) != 0));
        CK_BYTE fake[] = "fake";
        CK_ATTRIBUTE set[] = {{CKA_UNIQUE_ID, fake, 4}};
        check("C_SetAttributeValue(CKA_UNIQUE_ID)", CALL(Attrs_t, F_SetAttributeValue)(s, kek, set, 1),
              CKR_ATTRIBUTE_READ_ONLY);
        CK_ATTRIBUTE with_uid[] = {ATTR(CKA_CLASS, cls_data), {CKA_UNIQUE_ID, fake, 4}};
        check("C_CreateObject with CKA_UNIQUE_ID", CALL(CreateObject_t, F_CreateObject)(s, with_uid, 2, &h),
              CKR_ATTRIBUTE_READ_ONLY);
        CK_ATTRIBUTE set_junk[] = {ATTR(CKA_UNDEFINED, junk)};
        check("C_SetAttributeValue with 0x7FFFFFF0", CALL(Attrs_t, F_SetAttributeValue)(s, kek, set_junk, 1),
              CKR_ATTRIBUTE_TYPE_INVALID);
    }

    CK_HANDLE enc = des2_key(s, 1, 0, 0, 0), mac = des2_key(s, 0, 1, 0, 0);
    CK_MECHANISM ecb = {CKM_DES3_ECB, NULL, 0}, sha = {CKM_SHA256, NULL, 0}, m3 = {CKM_DES3_MAC, NULL, 0};
    CK_BYTE a[16] = "AAAAAAAABBBBBBBB", b[8] = "CCCCCCCC", out[64], ref[64];
    CK_ULONG outl, refl;

    printf("== C_EncryptUpdate / C_DecryptUpdate with a NULL output-length pointer\n");
    {
        must("C_EncryptInit", CALL(OpInit_t, F_EncryptInit)(s, &ecb, enc));
        check("C_EncryptUpdate(pulEncryptedPartLen = NULL)", CALL(OneShot_t, F_EncryptUpdate)(s, a, 16, out, NULL),
              CKR_ARGUMENTS_BAD);
        outl = sizeof out;
        check("  the operation is still there: C_EncryptUpdate", CALL(OneShot_t, F_EncryptUpdate)(s, b, 8, out, &outl),
              CKR_OK);
        must("C_EncryptFinal", CALL(Final_t, F_EncryptFinal)(s, out + outl, &(CK_ULONG){sizeof out - outl}));
        must("C_EncryptInit", CALL(OpInit_t, F_EncryptInit)(s, &ecb, enc));
        refl = sizeof ref;
        must("C_Encrypt(reference)", CALL(OneShot_t, F_Encrypt)(s, b, 8, ref, &refl));
        expect("  and its output is that of its own input, not of the refused call's", outl == 8 && memcmp(out, ref, 8) == 0);
        must("C_DecryptInit", CALL(OpInit_t, F_DecryptInit)(s, &ecb, enc));
        check("C_DecryptUpdate(pulPartLen = NULL)", CALL(OneShot_t, F_DecryptUpdate)(s, ref, 8, out, NULL),
              CKR_ARGUMENTS_BAD);
        outl = sizeof out;
        check("  the operation is still there: C_DecryptUpdate", CALL(OneShot_t, F_DecryptUpdate)(s, ref, 8, out, &outl),
              CKR_OK);
        expect("  and decrypts its own input", outl == 8 && memcmp(out, b, 8) == 0);
        outl = sizeof out;
        check("C_DecryptFinal", CALL(Final_t, F_DecryptFinal)(s, out, &outl), CKR_OK);
    }

    printf("== a failed call ends the operation\n");
    {
        must("C_EncryptInit", CALL(OpInit_t, F_EncryptInit)(s, &ecb, enc));
        outl = sizeof out;
        check("C_Encrypt of 7 bytes under DES3-ECB", CALL(OneShot_t, F_Encrypt)(s, a, 7, out, &outl), CKR_DATA_LEN_RANGE);
        check("  then C_Encrypt", CALL(OneShot_t, F_Encrypt)(s, a, 8, out, &outl), CKR_OPERATION_NOT_INITIALIZED);
        must("C_EncryptInit", CALL(OpInit_t, F_EncryptInit)(s, &ecb, enc));
        check("C_Encrypt(pulEncryptedDataLen = NULL)", CALL(OneShot_t, F_Encrypt)(s, a, 8, out, NULL), CKR_ARGUMENTS_BAD);
        check("  then C_Encrypt", CALL(OneShot_t, F_Encrypt)(s, a, 8, out, &outl), CKR_OPERATION_NOT_INITIALIZED);

        must("C_DecryptInit", CALL(OpInit_t, F_DecryptInit)(s, &ecb, enc));
        outl = sizeof out;
        check("C_Decrypt of 7 bytes", CALL(OneShot_t, F_Decrypt)(s, a, 7, out, &outl), CKR_ENCRYPTED_DATA_LEN_RANGE);
        check("  then C_Decrypt", CALL(OneShot_t, F_Decrypt)(s, a, 8, out, &outl), CKR_OPERATION_NOT_INITIALIZED);

        must("C_EncryptInit", CALL(OpInit_t, F_EncryptInit)(s, &ecb, enc));
        outl = sizeof out;
        must("C_EncryptUpdate(3 bytes)", CALL(OneShot_t, F_EncryptUpdate)(s, a, 3, out, &outl));
        outl = sizeof out;
        check("C_EncryptFinal with 3 bytes left", CALL(Final_t, F_EncryptFinal)(s, out, &outl), CKR_DATA_LEN_RANGE);
        check("  then C_EncryptFinal", CALL(Final_t, F_EncryptFinal)(s, out, &outl), CKR_OPERATION_NOT_INITIALIZED);

        must("C_DecryptInit", CALL(OpInit_t, F_DecryptInit)(s, &ecb, enc));
        outl = sizeof out;
        must("C_DecryptUpdate(3 bytes)", CALL(OneShot_t, F_DecryptUpdate)(s, a, 3, out, &outl));
        outl = sizeof out;
        check("C_DecryptFinal with 3 bytes left", CALL(Final_t, F_DecryptFinal)(s, out, &outl), CKR_ENCRYPTED_DATA_LEN_RANGE);
        check("  then C_DecryptFinal", CALL(Final_t, F_DecryptFinal)(s, out, &outl), CKR_OPERATION_NOT_INITIALIZED);

        must("C_DigestInit", CALL(DigestInit_t, F_DigestInit)(s, &sha));
        check("C_Digest(pulDigestLen = NULL)", CALL(OneShot_t, F_Digest)(s, a, 1, out, NULL), CKR_ARGUMENTS_BAD);
        outl = sizeof out;
        check("  then C_Digest", CALL(OneShot_t, F_Digest)(s, a, 1, out, &outl), CKR_OPERATION_NOT_INITIALIZED);
        must("C_DigestInit", CALL(DigestInit_t, F_DigestInit)(s, &sha));
        must("C_DigestUpdate", CALL(DataIn_t, F_DigestUpdate)(s, a, 1));
        check("C_DigestFinal(pulDigestLen = NULL)", CALL(Final_t, F_DigestFinal)(s, out, NULL), CKR_ARGUMENTS_BAD);
        check("  then C_DigestFinal", CALL(Final_t, F_DigestFinal)(s, out, &outl), CKR_OPERATION_NOT_INITIALIZED);

        must("C_SignInit", CALL(OpInit_t, F_SignInit)(s, &m3, mac));
        check("C_Sign(pulSignatureLen = NULL)", CALL(OneShot_t, F_Sign)(s, a, 8, out, NULL), CKR_ARGUMENTS_BAD);
        check("  then C_Sign", CALL(OneShot_t, F_Sign)(s, a, 8, out, &outl), CKR_OPERATION_NOT_INITIALIZED);
        must("C_SignInit", CALL(OpInit_t, F_SignInit)(s, &m3, mac));
        must("C_SignUpdate", CALL(DataIn_t, F_SignUpdate)(s, a, 8));
        check("C_SignFinal(pulSignatureLen = NULL)", CALL(Final_t, F_SignFinal)(s, out, NULL), CKR_ARGUMENTS_BAD);
        check("  then C_SignFinal", CALL(Final_t, F_SignFinal)(s, out, &outl), CKR_OPERATION_NOT_INITIALIZED);

        CK_BYTE bad[4] = {0, 0, 0, 0};
        must("C_VerifyInit", CALL(OpInit_t, F_VerifyInit)(s, &m3, mac));
        check("C_Verify with a wrong MAC", CALL(Verify_t, F_Verify)(s, a, 8, bad, 4), CKR_SIGNATURE_INVALID);
        check("  then C_Verify", CALL(Verify_t, F_Verify)(s, a, 8, bad, 4), CKR_OPERATION_NOT_INITIALIZED);
        must("C_VerifyInit", CALL(OpInit_t, F_VerifyInit)(s, &m3, mac));
        must("C_VerifyUpdate", CALL(DataIn_t, F_VerifyUpdate)(s, a, 8));
        check("C_VerifyFinal with a wrong MAC", CALL(DataIn_t, F_VerifyFinal)(s, bad, 4), CKR_SIGNATURE_INVALID);
        check("  then C_VerifyFinal", CALL(DataIn_t, F_VerifyFinal)(s, bad, 4), CKR_OPERATION_NOT_INITIALIZED);

        must("C_DigestInit", CALL(DigestInit_t, F_DigestInit)(s, &sha));
        outl = 4;
        check("C_Digest into 4 bytes", CALL(OneShot_t, F_Digest)(s, a, 1, out, &outl), CKR_BUFFER_TOO_SMALL);
        expect("  says 32 bytes", outl == 32);
        outl = sizeof out;
        check("  the operation is still there: C_Digest", CALL(OneShot_t, F_Digest)(s, a, 1, out, &outl), CKR_OK);
        expect("  SHA-256(\"A\")... of the input given", outl == 32);
    }

    printf("== a length query does not fix the result; one-shot after *Update is refused\n");
    {
        CK_BYTE ma[] = "a", mbcd[] = "bcd", mb[] = "b";
        must("C_DigestInit", CALL(DigestInit_t, F_DigestInit)(s, &sha));
        check("C_Digest(NULL, \"a\") (length query)", CALL(OneShot_t, F_Digest)(s, ma, 1, NULL, &outl), CKR_OK);
        expect("  32 bytes", outl == 32);
        outl = sizeof out;
        check("C_Digest(\"bcd\")", CALL(OneShot_t, F_Digest)(s, mbcd, 3, out, &outl), CKR_OK);
        expect("  is SHA-256(\"bcd\"), not SHA-256(\"a\")", outl == 32 && memcmp(out, SHA256_BCD, 32) == 0);
        must("C_DigestInit", CALL(DigestInit_t, F_DigestInit)(s, &sha));
        check("C_Digest(NULL, \"a\") (length query)", CALL(OneShot_t, F_Digest)(s, ma, 1, NULL, &outl), CKR_OK);
        outl = sizeof out;
        check("C_Digest(\"a\")", CALL(OneShot_t, F_Digest)(s, ma, 1, out, &outl), CKR_OK);
        expect("  is SHA-256(\"a\")", outl == 32 && memcmp(out, SHA256_A, 32) == 0);

        must("C_EncryptInit", CALL(OpInit_t, F_EncryptInit)(s, &ecb, enc));
        check("C_Encrypt(NULL, block 1) (length query)", CALL(OneShot_t, F_Encrypt)(s, a, 8, NULL, &outl), CKR_OK);
        outl = sizeof out;
        check("C_Encrypt(block 2)", CALL(OneShot_t, F_Encrypt)(s, b, 8, out, &outl), CKR_OK);
        expect("  is the ciphertext of block 2", outl == 8 && memcmp(out, ref, 8) == 0);

        must("C_EncryptInit", CALL(OpInit_t, F_EncryptInit)(s, &ecb, enc));
        check("C_EncryptUpdate(NULL, block 1) (length query)", CALL(OneShot_t, F_EncryptUpdate)(s, a, 8, NULL, &outl),
              CKR_OK);
        expect("  8 bytes", outl == 8);
        outl = sizeof out;
        check("C_EncryptUpdate(block 2)", CALL(OneShot_t, F_EncryptUpdate)(s, b, 8, out, &outl), CKR_OK);
        expect("  is the ciphertext of block 2 (the query consumed nothing)", outl == 8 && memcmp(out, ref, 8) == 0);
        outl = sizeof out;
        check("C_Encrypt after C_EncryptUpdate", CALL(OneShot_t, F_Encrypt)(s, b, 8, out, &outl), CKR_OPERATION_ACTIVE);
        outl = sizeof out;
        check("  the multi-part operation goes on: C_EncryptFinal", CALL(Final_t, F_EncryptFinal)(s, out, &outl), CKR_OK);

        must("C_DigestInit", CALL(DigestInit_t, F_DigestInit)(s, &sha));
        must("C_DigestUpdate(\"a\")", CALL(DataIn_t, F_DigestUpdate)(s, ma, 1));
        outl = sizeof out;
        check("C_Digest(\"b\") after C_DigestUpdate", CALL(OneShot_t, F_Digest)(s, mb, 1, out, &outl), CKR_OPERATION_ACTIVE);
        must("C_DigestUpdate(\"b\")", CALL(DataIn_t, F_DigestUpdate)(s, mb, 1));
        outl = sizeof out;
        check("C_DigestFinal", CALL(Final_t, F_DigestFinal)(s, out, &outl), CKR_OK);
        expect("  is SHA-256(\"ab\")", outl == 32 && memcmp(out, SHA256_AB, 32) == 0);

        must("C_VerifyInit", CALL(OpInit_t, F_VerifyInit)(s, &m3, mac));
        must("C_VerifyUpdate", CALL(DataIn_t, F_VerifyUpdate)(s, a, 8));
        CK_BYTE z[4] = {0};
        check("C_Verify after C_VerifyUpdate", CALL(Verify_t, F_Verify)(s, a, 8, z, 4), CKR_OPERATION_ACTIVE);
        if (F->version.major >= 3) {
            check("C_SessionCancel(CKF_VERIFY)", CALL(SessionCancel_t, F_SessionCancel)(s, 0x2000UL), CKR_OK);
            check("  then C_VerifyFinal", CALL(DataIn_t, F_VerifyFinal)(s, z, 4), CKR_OPERATION_NOT_INITIALIZED);
        } else {
            expect("C_SessionCancel (3.0 list)", 0);
        }
    }

    printf("== a vendor mechanism through the function list: CKM_QUILL_TR31_TRANSLATE\n");
    {
        CK_MECHANISM_INFO mi = {0, 0, 0};
        check("C_GetMechanismInfo(CKM_QUILL_TR31_TRANSLATE)",
              CALL(GetMechanismInfo_t, F_GetMechanismInfo)(0, CKM_QUILL_TR31_TRANSLATE, &mi), CKR_OK);
        expect("  CKF_ENCRYPT (and CKF_HW) only, KBPKs of 16..32 bytes",
               (mi.flags & ~CKF_HW) == CKF_ENCRYPT && mi.ulMinKeySize == 16 && mi.ulMaxKeySize == 32);
        /* Two AES KBPKs (wrap/unwrap only, not extractable), an extractable AES key under KBPK1. */
        CK_MECHANISM aes_gen = {CKM_AES_KEY_GEN, NULL, 0};
        CK_ULONG len16 = 16;
        CK_ATTRIBUTE kbpk_t[] = {ATTR(CKA_TOKEN, FALSE_), ATTR(CKA_VALUE_LEN, len16), ATTR(CKA_WRAP, TRUE_),
                                 ATTR(CKA_UNWRAP, TRUE_), ATTR(CKA_EXTRACTABLE, FALSE_)};
        CK_ATTRIBUTE key_t[] = {ATTR(CKA_TOKEN, FALSE_), ATTR(CKA_VALUE_LEN, len16), ATTR(CKA_ENCRYPT, TRUE_),
                                ATTR(CKA_EXTRACTABLE, TRUE_)};
        CK_HANDLE kbpk1 = 0, kbpk2 = 0, key = 0, back = 0;
        must("C_GenerateKey(KBPK1)", CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, kbpk_t, N(kbpk_t), &kbpk1));
        must("C_GenerateKey(KBPK2)", CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, kbpk_t, N(kbpk_t), &kbpk2));
        must("C_GenerateKey(AES key)", CALL(GenerateKey_t, F_GenerateKey)(s, &aes_gen, key_t, N(key_t), &key));
        CK_BYTE header[] = "D0000D0AB00E0000";
        CK_MECHANISM tr31_wrap = {CKM_QUILL_TR31_WRAP, header, 16}, tr31_unwrap = {CKM_QUILL_TR31_UNWRAP, NULL, 0};
        CK_BYTE block[256], moved[256];
        CK_ULONG bl = sizeof block, ml = 0;
        must("C_WrapKey(CKM_QUILL_TR31_WRAP) under KBPK1", CALL(WrapKey_t, F_WrapKey)(s, &tr31_wrap, kbpk1, key, block, &bl));
        CK_ULONG source = kbpk1; /* the parameter: the source KBPK's handle, one CK_ULONG */
        CK_MECHANISM translate = {CKM_QUILL_TR31_TRANSLATE, &source, sizeof source};
        must("C_EncryptInit(CKM_QUILL_TR31_TRANSLATE, KBPK2)", CALL(OpInit_t, F_EncryptInit)(s, &translate, kbpk2));
        check("C_Encrypt(NULL, block) (length query)", CALL(OneShot_t, F_Encrypt)(s, block, bl, NULL, &ml), CKR_OK);
        expect("  the length of the block", ml == bl);
        ml = sizeof moved;
        check("C_Encrypt(block)", CALL(OneShot_t, F_Encrypt)(s, block, bl, moved, &ml), CKR_OK);
        expect("  the same header, another payload",
               ml == bl && memcmp(moved, block, 16) == 0 && memcmp(moved + 16, block + 16, bl - 16) != 0);
        CK_ATTRIBUTE session_key[] = {ATTR(CKA_TOKEN, FALSE_)};
        check("C_UnwrapKey(CKM_QUILL_TR31_UNWRAP) of the translated block under KBPK2",
              CALL(UnwrapKey_t, F_UnwrapKey)(s, &tr31_unwrap, kbpk2, moved, ml, session_key, 1, &back), CKR_OK);
        CK_BYTE kcv1[3] = {0}, kcv2[3] = {1};
        CK_ATTRIBUTE c1[] = {{CKA_CHECK_VALUE, kcv1, 3}}, c2[] = {{CKA_CHECK_VALUE, kcv2, 3}};
        must("C_GetAttributeValue(CKA_CHECK_VALUE) of the key", CALL(Attrs_t, F_GetAttributeValue)(s, key, c1, 1));
        must("C_GetAttributeValue(CKA_CHECK_VALUE) of the translated key",
             CALL(Attrs_t, F_GetAttributeValue)(s, back, c2, 1));
        expect("  the same key (same check value)", memcmp(kcv1, kcv2, 3) == 0);
        check("  it no longer opens under KBPK1",
              CALL(UnwrapKey_t, F_UnwrapKey)(s, &tr31_unwrap, kbpk1, moved, ml, session_key, 1, &back),
              CKR_WRAPPED_KEY_INVALID);

        CK_MECHANISM short_param = {CKM_QUILL_TR31_TRANSLATE, &source, 4};
        check("C_EncryptInit(CKM_QUILL_TR31_TRANSLATE) with a 4-byte parameter",
              CALL(OpInit_t, F_EncryptInit)(s, &short_param, kbpk2), CKR_MECHANISM_PARAM_INVALID);
        block[bl - 1] = block[bl - 1] == '0' ? '1' : '0';
        must("C_EncryptInit(CKM_QUILL_TR31_TRANSLATE, KBPK2)", CALL(OpInit_t, F_EncryptInit)(s, &translate, kbpk2));
        ml = sizeof moved;
        check("C_Encrypt of the block with one MAC character changed",
              CALL(OneShot_t, F_Encrypt)(s, block, bl, moved, &ml), CKR_DATA_INVALID);
        must("C_EncryptInit(CKM_QUILL_TR31_TRANSLATE, KBPK2)", CALL(OpInit_t, F_EncryptInit)(s, &translate, kbpk2));
        ml = sizeof moved;
        check("C_EncryptUpdate (single-part only)", CALL(OneShot_t, F_EncryptUpdate)(s, block, bl, moved, &ml),
              CKR_FUNCTION_NOT_SUPPORTED);
    }

    printf("== C_DigestKey checks the session first\n");
    check("C_DigestKey(invalid session, invalid key)", CALL(DigestKey_t, F_DigestKey)(0xDEAD, 0xBEEF),
          CKR_SESSION_HANDLE_INVALID);

    CALL(Session_t, F_CloseSession)(s);
    CALL(Initialize_t, F_Finalize)(NULL);
    printf("c-conformance: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
