// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {NodeRegistry} from "./NodeRegistry.sol";
import {PaymentVault} from "./PaymentVault.sol";

/// @title Receipt batches: Merkle roots submitted by inference nodes, attested by k verifiers,
/// finalized after a challenge window with the fees split between node, verifiers and treasury.
/// A batch no quorum attests within `attestationTimeout` expires: its fees go back to the node's
/// payment vault (to be batched again); it can still be challenged for `challengeWindow` after
/// expiring (so expiring cannot outrun a fraud proof), after which it lapses and stops locking
/// the node's stake.
/// @dev This contract is the receipts' EIP-712 `verifyingContract` (domain "Cairn", "1"). A leaf is
/// OpenZeppelin's standard leaf over one value: keccak256(bytes.concat(keccak256(abi.encode(digest))))
/// where `digest` is the receipt's EIP-712 signing hash.
contract Settlement is EIP712, AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    enum Status {
        None,
        Submitted,
        Attested,
        Finalized,
        Voided,
        Expired,
        Lapsed
    }

    struct Batch {
        address node;
        uint32 count;
        uint64 submittedAt;
        bytes32 root;
        uint256 fees;
        uint64 attestedAt;
        Status status;
        address[] verifiers;
    }

    /// The inference receipt, exactly as nodes sign it.
    struct Receipt {
        bytes32 requestId;
        bytes32 model;
        bytes32 inputHash;
        bytes32 outputHash;
        bytes32 profileHash;
        address node;
        uint64 timestamp;
        uint256 price;
        bytes32 paymentRef;
    }

    /// A language-model call's receipt, exactly as nodes sign it: the SHA-256 of the exact request
    /// and response bytes, the tokens counted, and whether the answer was delivered whole.
    struct LlmReceipt {
        bytes32 requestId;
        bytes32 model;
        bytes32 requestHash;
        bytes32 responseHash;
        uint32 promptTokens;
        uint32 completionTokens;
        bool complete;
        bytes32 profileHash;
        address node;
        uint64 timestamp;
        uint256 price;
        bytes32 paymentRef;
    }

    bytes32 public constant GOVERNOR_ROLE = keccak256("GOVERNOR_ROLE");
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 requestId,bytes32 model,bytes32 inputHash,bytes32 outputHash,bytes32 profileHash,address node,uint64 timestamp,uint256 price,bytes32 paymentRef)"
    );
    bytes32 public constant LLM_RECEIPT_TYPEHASH = keccak256(
        "LlmReceipt(bytes32 requestId,bytes32 model,bytes32 requestHash,bytes32 responseHash,uint32 promptTokens,uint32 completionTokens,bool complete,bytes32 profileHash,address node,uint64 timestamp,uint256 price,bytes32 paymentRef)"
    );
    bytes32 public constant ATTESTATION_TYPEHASH =
        keccak256("BatchAttestation(uint256 batchId,bytes32 root,uint32 count,uint256 fees)");
    bytes32 public constant VERDICT_TYPEHASH =
        keccak256("FraudVerdict(uint256 batchId,bytes32 receiptHash,bytes32 evidenceHash)");
    uint16 public constant BPS = 10_000;

    IERC20 public immutable feeToken;
    NodeRegistry public immutable registry;

    address public treasury;
    /// Distinct active verifiers needed to attest a batch or to sign a fraud verdict.
    uint16 public verifierQuorum;
    /// Seconds after attestation during which the batch can be challenged.
    uint64 public challengeWindow;
    /// Seconds after submission within which a batch must be attested, else anyone may expire it.
    uint64 public attestationTimeout;
    /// Shares of a batch's fees; the node gets the rest.
    uint16 public verifierBps;
    uint16 public treasuryBps;
    /// Share of the node's stake taken on a proven fraud, and the share of that paid to the
    /// verifiers who signed the fraud verdict (equally; the rest goes to the treasury). The reward
    /// goes to the verdict's signers, not to the transaction's sender, so copying a challenge out
    /// of the mempool earns nothing.
    uint16 public slashBps;
    uint16 public challengerRewardBps;

    uint256 public batchCount;
    mapping(uint256 id => Batch) private _batches;
    /// The last batch each node submitted under each root (keyed by keccak256(node, root)).
    mapping(bytes32 nodeRoot => uint256 id) private _batchOfRoot;

    error NotActiveNode(address node);
    error EmptyBatch();
    error UnknownBatch(uint256 id);
    error WrongStatus(uint256 id, Status status);
    error QuorumNotMet(uint256 signers, uint256 quorum);
    error SignersNotAscending();
    error NotActiveVerifier(address signer);
    error ChallengeWindowOpen(uint64 endsAt);
    error ChallengeWindowClosed();
    error ReceiptNotFromBatchNode(address receiptNode, address batchNode);
    error InvalidProof();
    error InvalidBps();
    error ZeroAddress();
    error NotExpired(uint64 expiresAt);
    error RootSubmitted(uint256 id);

    event BatchSubmitted(uint256 indexed id, address indexed node, bytes32 root, uint32 count, uint256 fees);
    event VaultDeployed(address indexed node, address vault);
    event BatchAttested(uint256 indexed id, address[] verifiers);
    event BatchFinalized(uint256 indexed id, uint256 toNode, uint256 toVerifiers, uint256 toTreasury);
    event BatchExpired(uint256 indexed id, uint256 refunded);
    event BatchLapsed(uint256 indexed id);
    event AttestationTimeoutSet(uint64 timeout);
    event BatchChallenged(
        uint256 indexed id, bytes32 indexed receiptHash, address indexed challenger, uint256 slashed, uint256 reward
    );
    event FeeSplitSet(uint16 verifierBps, uint16 treasuryBps);
    event SlashingSet(uint16 slashBps, uint16 challengerRewardBps);
    event QuorumSet(uint16 quorum);
    event ChallengeWindowSet(uint64 window);
    event TreasurySet(address treasury);

    struct Params {
        address treasury;
        uint16 verifierQuorum;
        uint64 challengeWindow;
        uint64 attestationTimeout;
        uint16 verifierBps;
        uint16 treasuryBps;
        uint16 slashBps;
        uint16 challengerRewardBps;
    }

    constructor(IERC20 feeToken_, NodeRegistry registry_, address governor, Params memory p) EIP712("Cairn", "1") {
        feeToken = feeToken_;
        registry = registry_;
        _grantRole(DEFAULT_ADMIN_ROLE, governor);
        _grantRole(GOVERNOR_ROLE, governor);
        _setTreasury(p.treasury);
        _setQuorum(p.verifierQuorum);
        challengeWindow = p.challengeWindow;
        attestationTimeout = p.attestationTimeout;
        _setFeeSplit(p.verifierBps, p.treasuryBps);
        _setSlashing(p.slashBps, p.challengerRewardBps);
    }

    // ---- batches ----

    /// @notice An active inference node commits `count` receipts under `root` and escrows their
    /// `fees`: first from its payment vault (where its x402 and voucher payments arrive), the rest
    /// from its own balance (approve first). Returns the batch id.
    function submitBatch(bytes32 root, uint32 count, uint256 fees) external nonReentrant returns (uint256 id) {
        if (!registry.isActive(msg.sender, NodeRegistry.Role.Inference)) revert NotActiveNode(msg.sender);
        if (count == 0) revert EmptyBatch();
        // The same receipts twice would have the node pay the verifiers' and treasury's shares
        // twice (a submission it thought lost, sent again). Only a batch that expired unattested
        // gives its receipts back to be batched again, so only then may the root come again.
        // Keyed by node: another node cannot block a root by submitting it first.
        bytes32 nodeRoot = keccak256(abi.encode(msg.sender, root));
        uint256 prior = _batchOfRoot[nodeRoot];
        if (prior != 0) {
            Status s = _batches[prior].status;
            if (s != Status.Expired && s != Status.Lapsed) revert RootSubmitted(prior);
        }
        id = ++batchCount;
        _batchOfRoot[nodeRoot] = id;
        Batch storage b = _batches[id];
        b.node = msg.sender;
        b.count = count;
        b.submittedAt = uint64(block.timestamp);
        b.root = root;
        b.fees = fees;
        b.status = Status.Submitted;
        emit BatchSubmitted(id, msg.sender, root, count, fees);
        registry.lockStake(msg.sender);
        if (fees == 0) return id;
        address vault = vaultOf(msg.sender);
        uint256 fromVault = feeToken.balanceOf(vault);
        if (fromVault > fees) fromVault = fees;
        if (fromVault > 0) {
            if (vault.code.length == 0) {
                new PaymentVault{salt: bytes32(uint256(uint160(msg.sender)))}(feeToken);
                emit VaultDeployed(msg.sender, vault);
            }
            PaymentVault(vault).release(fromVault);
        }
        if (fees > fromVault) feeToken.safeTransferFrom(msg.sender, address(this), fees - fromVault);
    }

    /// @notice The payment address of inference node `node`: its x402 `payTo` and voucher payee.
    /// Funds there can only become that node's batch fees.
    function vaultOf(address node) public view returns (address) {
        bytes32 initCode = keccak256(abi.encodePacked(type(PaymentVault).creationCode, abi.encode(feeToken)));
        bytes32 h = keccak256(abi.encodePacked(bytes1(0xff), address(this), bytes32(uint256(uint160(node))), initCode));
        return address(uint160(uint256(h)));
    }

    /// @notice Records `signatures` of distinct active verifiers (ascending signer addresses) over the
    /// batch's EIP-712 `BatchAttestation`; at least `verifierQuorum` are needed. Anyone may submit.
    function attestBatch(uint256 id, bytes[] calldata signatures) external {
        Batch storage b = _batch(id);
        if (b.status != Status.Submitted) revert WrongStatus(id, b.status);
        bytes32 digest = attestationDigest(id);
        address[] memory signers = _quorumSigners(digest, signatures);
        b.verifiers = signers;
        b.attestedAt = uint64(block.timestamp);
        b.status = Status.Attested;
        emit BatchAttested(id, signers);
    }

    /// @notice After the challenge window, pays the batch's fees out: verifiers' share split equally
    /// among the attesting verifiers (rounding dust to the treasury), treasury share, rest to the node.
    function finalize(uint256 id) external nonReentrant {
        Batch storage b = _batch(id);
        if (b.status != Status.Attested) revert WrongStatus(id, b.status);
        uint64 endsAt = b.attestedAt + challengeWindow;
        if (block.timestamp < endsAt) revert ChallengeWindowOpen(endsAt);
        b.status = Status.Finalized;
        registry.unlockStake(b.node);

        uint256 fees = b.fees;
        uint256 n = b.verifiers.length;
        uint256 verifierShare = (fees * verifierBps) / BPS;
        uint256 treasuryShare = (fees * treasuryBps) / BPS;
        uint256 perVerifier = verifierShare / n;
        uint256 toVerifiers = perVerifier * n;
        // Rounding dust of the equal split goes to the treasury, so the node gets exactly its share.
        uint256 toTreasury = treasuryShare + (verifierShare - toVerifiers);
        uint256 toNode = fees - verifierShare - treasuryShare;
        emit BatchFinalized(id, toNode, toVerifiers, toTreasury);

        if (toNode > 0) feeToken.safeTransfer(b.node, toNode);
        if (perVerifier > 0) {
            for (uint256 i; i < n; ++i) {
                feeToken.safeTransfer(b.verifiers[i], perVerifier);
            }
        }
        if (toTreasury > 0) feeToken.safeTransfer(treasury, toTreasury);
    }

    /// @notice Closes a batch no verifier quorum attested within `attestationTimeout` of its
    /// submission: its fees go back to the node's payment vault (the node batches its receipts
    /// again). It stays open to challenges for `challengeWindow` (recorded as `attestedAt`),
    /// and keeps the node's stake locked until it lapses. Anyone may call it.
    function expire(uint256 id) external nonReentrant {
        Batch storage b = _batch(id);
        if (b.status != Status.Submitted) revert WrongStatus(id, b.status);
        uint64 expiresAt = b.submittedAt + attestationTimeout;
        if (block.timestamp < expiresAt) revert NotExpired(expiresAt);
        b.status = Status.Expired;
        b.attestedAt = uint64(block.timestamp);
        uint256 fees = b.fees;
        b.fees = 0;
        emit BatchExpired(id, fees);
        if (fees > 0) feeToken.safeTransfer(vaultOf(b.node), fees);
    }

    /// @notice Ends an expired batch once its challenge window has passed: it no longer locks
    /// the node's stake. Anyone may call it.
    function lapse(uint256 id) external {
        Batch storage b = _batch(id);
        if (b.status != Status.Expired) revert WrongStatus(id, b.status);
        uint64 endsAt = b.attestedAt + challengeWindow;
        if (block.timestamp < endsAt) revert ChallengeWindowOpen(endsAt);
        b.status = Status.Lapsed;
        registry.unlockStake(b.node);
        emit BatchLapsed(id);
    }

    /// @notice Proves that `receipt` is in batch `id` and that a verifier quorum signed a fraud verdict
    /// on it: the batch is voided (its fees go to the treasury) and the node's stake is slashed, part of
    /// it to the caller.
    function challenge(
        uint256 id,
        Receipt calldata receipt,
        bytes32[] calldata proof,
        bytes32 evidenceHash,
        bytes[] calldata verdictSignatures
    ) external nonReentrant {
        _challenge(id, receipt.node, receiptHash(receipt), proof, evidenceHash, verdictSignatures);
    }

    /// @notice `challenge` for a language-model receipt in batch `id`.
    function challengeLlm(
        uint256 id,
        LlmReceipt calldata receipt,
        bytes32[] calldata proof,
        bytes32 evidenceHash,
        bytes[] calldata verdictSignatures
    ) external nonReentrant {
        _challenge(id, receipt.node, llmReceiptHash(receipt), proof, evidenceHash, verdictSignatures);
    }

    /// A receipt (signing hash `rh`, naming `receiptNode`) proven in batch `id` with a fraud verdict.
    function _challenge(
        uint256 id,
        address receiptNode,
        bytes32 rh,
        bytes32[] calldata proof,
        bytes32 evidenceHash,
        bytes[] calldata verdictSignatures
    ) private {
        Batch storage b = _batch(id);
        if (b.status == Status.Attested || b.status == Status.Expired) {
            if (block.timestamp >= uint256(b.attestedAt) + challengeWindow) revert ChallengeWindowClosed();
        } else if (b.status != Status.Submitted) {
            revert WrongStatus(id, b.status);
        }
        if (receiptNode != b.node) revert ReceiptNotFromBatchNode(receiptNode, b.node);
        if (!MerkleProof.verifyCalldata(proof, b.root, leaf(rh))) revert InvalidProof();
        address[] memory signers = _quorumSigners(verdictDigest(id, rh, evidenceHash), verdictSignatures);

        b.status = Status.Voided;
        registry.unlockStake(b.node);
        uint256 fees = b.fees;
        NodeRegistry.Node memory node = registry.getNode(b.node);
        // Unbonding stake backs the batches submitted before the unbond request just the same.
        uint256 slashAmount = ((node.stake + node.unbonding) * slashBps) / BPS;
        uint256 reward = (slashAmount * challengerRewardBps) / BPS;
        emit BatchChallenged(id, rh, msg.sender, slashAmount, reward);

        uint256 perSigner = reward / signers.length;
        uint256 paid;
        for (uint256 i; i < signers.length; ++i) {
            paid += registry.slash(b.node, perSigner, signers[i]);
        }
        registry.slash(b.node, slashAmount - paid, treasury);
        if (fees > 0) feeToken.safeTransfer(treasury, fees);
    }

    // ---- views ----

    function getBatch(uint256 id) external view returns (Batch memory) {
        return _batches[id];
    }

    /// @notice The receipt's EIP-712 signing hash under this contract's domain.
    function receiptHash(Receipt calldata r) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    RECEIPT_TYPEHASH,
                    r.requestId,
                    r.model,
                    r.inputHash,
                    r.outputHash,
                    r.profileHash,
                    r.node,
                    r.timestamp,
                    r.price,
                    r.paymentRef
                )
            )
        );
    }

    /// @notice A language-model receipt's EIP-712 signing hash under this contract's domain. Every
    /// field is static, so `abi.encode` of the struct is its EIP-712 `encodeData`.
    function llmReceiptHash(LlmReceipt calldata r) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(LLM_RECEIPT_TYPEHASH, r)));
    }

    /// @notice OpenZeppelin StandardMerkleTree leaf of a receipt hash (type "bytes32").
    function leaf(bytes32 receiptDigest) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(receiptDigest))));
    }

    /// @notice Whether `receiptDigest` is in batch `id` under `proof`.
    function verifyInclusion(uint256 id, bytes32 receiptDigest, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        return MerkleProof.verifyCalldata(proof, _batches[id].root, leaf(receiptDigest));
    }

    function attestationDigest(uint256 id) public view returns (bytes32) {
        Batch storage b = _batches[id];
        return _hashTypedDataV4(keccak256(abi.encode(ATTESTATION_TYPEHASH, id, b.root, b.count, b.fees)));
    }

    function verdictDigest(uint256 id, bytes32 rh, bytes32 evidenceHash) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(VERDICT_TYPEHASH, id, rh, evidenceHash)));
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    // ---- governance ----

    function setFeeSplit(uint16 verifierBps_, uint16 treasuryBps_) external onlyRole(GOVERNOR_ROLE) {
        _setFeeSplit(verifierBps_, treasuryBps_);
    }

    function setSlashing(uint16 slashBps_, uint16 challengerRewardBps_) external onlyRole(GOVERNOR_ROLE) {
        _setSlashing(slashBps_, challengerRewardBps_);
    }

    function setQuorum(uint16 quorum) external onlyRole(GOVERNOR_ROLE) {
        _setQuorum(quorum);
    }

    function setChallengeWindow(uint64 window) external onlyRole(GOVERNOR_ROLE) {
        challengeWindow = window;
        emit ChallengeWindowSet(window);
    }

    function setAttestationTimeout(uint64 timeout) external onlyRole(GOVERNOR_ROLE) {
        attestationTimeout = timeout;
        emit AttestationTimeoutSet(timeout);
    }

    function setTreasury(address treasury_) external onlyRole(GOVERNOR_ROLE) {
        _setTreasury(treasury_);
    }

    // ---- internals ----

    function _batch(uint256 id) private view returns (Batch storage b) {
        b = _batches[id];
        if (b.status == Status.None) revert UnknownBatch(id);
    }

    function _quorumSigners(bytes32 digest, bytes[] calldata signatures) private view returns (address[] memory signers) {
        uint256 n = signatures.length;
        if (n < verifierQuorum) revert QuorumNotMet(n, verifierQuorum);
        signers = new address[](n);
        address previous;
        for (uint256 i; i < n; ++i) {
            address signer = ECDSA.recover(digest, signatures[i]);
            if (signer <= previous) revert SignersNotAscending();
            if (!registry.isActive(signer, NodeRegistry.Role.Verifier)) revert NotActiveVerifier(signer);
            signers[i] = signer;
            previous = signer;
        }
    }

    function _setFeeSplit(uint16 v, uint16 t) private {
        if (uint256(v) + t > BPS) revert InvalidBps();
        verifierBps = v;
        treasuryBps = t;
        emit FeeSplitSet(v, t);
    }

    function _setSlashing(uint16 s, uint16 c) private {
        if (s > BPS || c > BPS) revert InvalidBps();
        slashBps = s;
        challengerRewardBps = c;
        emit SlashingSet(s, c);
    }

    function _setQuorum(uint16 q) private {
        if (q == 0) revert QuorumNotMet(0, 1);
        verifierQuorum = q;
        emit QuorumSet(q);
    }

    function _setTreasury(address t) private {
        if (t == address(0)) revert ZeroAddress();
        treasury = t;
        emit TreasurySet(t);
    }
}
